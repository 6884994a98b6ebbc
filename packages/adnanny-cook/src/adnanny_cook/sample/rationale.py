"""Reference rationales written from the rules that produced each label (golden sets, §3.3; the ready corpus).

Phrasing varies with the seeded rng so the corpus is not one template (§3.4 asks for diversity), but every
rationale cites concrete input details and ends by restating the given labels, like the paper's example.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["ad_user_rationale", "keyword_query_rationale", "query_ad_rationale"]

_DEFECT_TEXT = {
    "typo": "the description contains a spelling mistake",
    "all_caps": "the title is written in all caps with excessive exclamation marks",
    "placeholder": "the description shows an unfilled {KeyWord} placeholder",
    "truncated": "the description is cut off mid-sentence",
    "unsupported_claim": "the description makes unsupported claims such as '#1 in the world, 100% guaranteed'",
}


def query_ad_rationale(rng: random.Random, q: Any, ad: Any, labels: dict[str, str], reasons: dict[str, Any]) -> str:
    want = q.product
    cons = []
    if q.brand:
        cons.append(f"from {q.brand}")
    if q.price == "cheap":
        cons.append("at a low price")
    elif q.price == "luxury":
        cons.append("at the high end")
    elif q.price:
        cons.append(f"for {q.price.replace('under ', 'under $')}")
    if q.city:
        cons.append(f"in {q.city}")
    elif q.near_me:
        cons.append("near them")
    intent = {"research": "and is still researching options", "compare": "and wants to compare brands",
              "buy": "and is ready to buy", "local": "from a local provider", "price": "with price in mind"}[q.intent]
    s1 = rng.choice((f"The user is looking for {want}{' ' + ' '.join(cons) if cons else ''} {intent}.",
                     f"The query '{q.text}' shows the user wants {want}{' ' + ' '.join(cons) if cons else ''}."))
    where = f" in {ad.city}" if ad.city else ""
    s2 = rng.choice((f"The ad promotes {ad.tier}-tier {ad.product} from {ad.brand}{where}.",
                     f"The ad from {ad.brand} offers {ad.product}{where} at {ad.tier} prices."))
    L = labels["label"]
    if not reasons["category_match"]:
        s3 = rng.choice((f"The ad is about {ad.category}, a different need from the {q.category} the user wants, "
                         f"so it does not help this search.",
                         f"{ad.product.capitalize()} is unrelated to {want}, so the ad does not meet the intent."))
    elif not reasons["product_match"]:
        s3 = (f"Both are in {ad.category}, but the ad offers {ad.product} rather than {want}, so it only partly "
              f"matches the need.")
    elif reasons["brand_conflict"]:
        s3 = (f"The product matches, but the user asked for {q.brand} and the ad is from {ad.brand}, so the match "
              f"is only partial.")
    elif reasons["price_conflict"]:
        s3 = (f"The product matches, but the requested price level conflicts with this {ad.tier}-tier offer, so "
              f"the ad only partly satisfies the need.")
    else:
        extra = f" from the requested brand {ad.brand}" if reasons["brand_match"] else ""
        s3 = rng.choice((f"The ad offers exactly the {want} the user wants{extra}, with no price or brand conflict.",
                         f"The ad directly satisfies the search for {want}{extra}."))
    if labels["location_label"] == "bad":
        s4 = f"The user wants it in {q.city} but the ad serves {ad.city}, so the location does not fit."
    elif q.city and ad.city:
        s4 = f"The ad serves {ad.city}, the city in the query, so the location fits."
    else:
        s4 = rng.choice(("There is no location conflict.", "Nothing about the location conflicts."))
    if ad.defects:
        s5 = f"The creative has a problem: {_DEFECT_TEXT[ad.defects[0]]}."
    else:
        s5 = rng.choice(("The ad text is clear and well written.", "The creative is clean and well formed."))
    s6 = (f"Therefore the relevance label '{L.capitalize()}', location label "
          f"'{labels['location_label'].capitalize()}' and ad-quality label "
          f"'{labels['quality_label'].capitalize()}' are appropriate.")
    order = [s1, s2] if rng.random() < 0.7 else [s2, s1]
    return " ".join([*order, s3, s4, s5, s6])


def ad_user_rationale(rng: random.Random, history_first: str, score: int, reasons: dict[str, Any]) -> str:
    main, cat2 = reasons["main_product"], reasons["second_category"]
    s1 = rng.choice((f"The user's recent activity centers on {main} (for example, {history_first}), with some "
                     f"interest in {cat2}.",
                     f"Most of the user's actions are about {main}, e.g. {history_first}; a smaller share is "
                     f"about {cat2}."))
    s2 = f"The ad promotes {reasons['ad_product']} from {reasons['ad_brand']}."
    m = reasons["match"]
    s3 = {
        "main_product": f"This is exactly the {main} the user has been researching, a direct match.",
        "main_category_other_product": f"It is in the same {reasons['main_category']} category as the user's main "
                                       f"interest but a different product than {main}, so it is relevant but "
                                       f"not a direct match.",
        "secondary_interest": f"It matches the user's secondary interest in {cat2}, not the main one.",
        "same_group": f"{reasons['ad_category'].capitalize()} is only loosely related to the user's interest in "
                      f"{reasons['main_category']}.",
        "unrelated": f"Nothing in the history relates to {reasons['ad_category']}, so the ad does not fit this "
                     f"user.",
    }[m]
    return f"{s1} {s2} {s3} Therefore a relevance score of {score} is appropriate."


def keyword_query_rationale(rng: random.Random, row: dict[str, Any]) -> str:
    kw, q, rule = row["keyword"], row["query"], row["rule"]
    add = {
        "brand": "adds a specific brand",
        "purpose": "adds a purpose and target user",
        "research_intent": "introduces a research intent",
        "budget": "adds a realistic budget constraint",
        "near_me": "adds a local 'near me' constraint",
        "location": "adds a specific location",
        "domain_term": "adds a domain-specific qualifier",
    }[rule]
    return rng.choice((
        f"The query '{q}' keeps the {row['category']} category of the keyword '{kw}' and {add}, making it "
        f"narrower and still relevant to the ad '{row['ad_title']}'.",
        f"Starting from '{kw}', the query {add}; it stays in {row['category']}, is more specific than the "
        f"keyword, and matches what the landing page offers.",
    ))
