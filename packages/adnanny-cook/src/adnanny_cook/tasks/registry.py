"""The eight offline tasks of the paper (§2), defined once.

Labeling tasks (closed label sets): `query_ad`, `ad_user`, `pairwise_judgment`.
Generation tasks (free-text outputs): `keyword_query`, `user_query`, `user_profile`, `ad_rewrite`,
`keyword_extension`.

Reasoning prompts follow §3.2: they show the existing label and ask, in explicit steps, for the intent, what the
ad offers, and why the given labels fit. Each task carries variants (rephrased question, reordered steps, an
in-prompt example) used by golden-set validation (§3.3) and rejection sampling (§3.4).
"""

from __future__ import annotations

from typing import Any

from adnanny_cook.errors import UnknownTaskError
from adnanny_cook.tasks.spec import CONTROL_TAGS, PromptVariant, TaskSpec

__all__ = ["KEYWORD_RULES", "TASK_NAMES", "get_task", "all_tasks"]


def _cap(field: str, value: Any) -> str:
    return str(value).capitalize() if isinstance(value, str) else str(value)


KEYWORD_RULES: tuple[str, ...] = (
    "Stay in the same product category as the keyword.",
    "Be narrower and more specific than the keyword, never broader.",
    "Use natural synonyms only when relevance stays strong.",
    "Add domain-specific terms, or brand or purpose-driven context.",
    "Vary user intents (buying, researching, comparing, local).",
    "Add realistic constraints such as a budget or \"near me\".",
    "Stay consistent with the ad and its landing page; no near-duplicates of other queries.",
)

_QA_GUIDE = (
    "Relevance label: Good = the ad satisfies the query's intent (same product, no conflicting brand, price or "
    "intent); Fair = same category but only partly satisfies it (different product type, brand, price level or "
    "intent); Bad = a different category or need. Location label: Bad only when the query names a place and the "
    "ad serves a different place; otherwise Good. Ad-quality label: Bad when the creative has a defect (typos, "
    "all caps, placeholder or truncated text, unsupported claims, missing details); otherwise Good."
)

_QUERY_AD = TaskSpec(
    name="query_ad",
    description="Judge how relevant an ad is to a search query, whether its location fits, and its creative "
                "quality.",
    input_fields=("query", "ad_title", "ad_description", "ad_url"),
    input_titles={"query": "Query", "ad_title": "Ad title", "ad_description": "Ad description",
                  "ad_url": "Ad URL"},
    label_fields={"label": ("bad", "fair", "good"), "location_label": ("good", "bad"),
                  "quality_label": ("good", "bad")},
    tags={"label": "Label", "location_label": "LocationLabel", "quality_label": "AdQuality"},
    instruction="You label query-ad relevance for a search ads system. Read the query and the ad, then give the "
                "relevance, location and ad-quality labels.",
    label_guidelines=_QA_GUIDE,
    defect_values={"label": ("bad",), "location_label": ("bad",), "quality_label": ("bad",)},
    value_display=_cap,
    reasoning_variants=(
        PromptVariant(
            id="steps",
            question="Why are the given labels appropriate for this query and ad?",
            steps=("Describe the user's intent: the product or service wanted and any brand, price, location "
                   "or intent constraints.",
                   "Summarize what the ad offers: product, brand, price level, location.",
                   "Compare the two and explain why the given relevance label fits.",
                   "Explain the location label and the ad-quality label.",
                   "Conclude that the given labels are appropriate.")),
        PromptVariant(
            id="rephrased",
            question="What makes this ad relevant, or not, to this query?",
            steps=("State what the searcher is looking for, including constraints.",
                   "State what the ad promotes.",
                   "Explain where they agree and where they differ, and why that gives the given relevance label.",
                   "Explain the location and ad-quality labels.",
                   "Conclude that the given labels are appropriate.")),
        PromptVariant(
            id="reordered",
            question="Why are the given labels appropriate for this query and ad?",
            steps=("Summarize what the ad offers: product, brand, price level, location.",
                   "Describe the user's intent and constraints.",
                   "Explain why the given relevance label fits.",
                   "Explain the location label and the ad-quality label.",
                   "Conclude that the given labels are appropriate.")),
        PromptVariant(
            id="example",
            question="Why are the given labels appropriate for this query and ad?",
            steps=("Describe the user's intent.", "Summarize what the ad offers.",
                   "Explain why the given labels fit.", "Conclude that the given labels are appropriate."),
            example="The user wants an inexpensive place to stay in downtown Paris. The ad is for a luxury "
                    "5-star hotel in central Paris. The city and central location match, but the price level "
                    "does not match the request for something cheap, so the ad only partially satisfies the "
                    "need. The ad text is clear and well written. Therefore the location label 'Good', relevance "
                    "label 'Fair' and ad-quality label 'Good' are appropriate."),
    ),
    inference_example=(
        {"query": "cheap hotel in downtown Paris", "ad_title": "Luxury 5-star hotel in central Paris",
         "ad_description": "Premium suites, fine dining, and concierge service near major attractions.",
         "ad_url": "www.examplehotel.com"},
        {"label": "fair", "location_label": "good", "quality_label": "good"},
        "The user wants a cheap hotel in downtown Paris. The ad offers a luxury hotel in central Paris: the city "
        "matches but the price level conflicts, so the match is partial. The text is clean."),
)

_AD_USER = TaskSpec(
    name="ad_user",
    description="Score how relevant an ad is to a user given the user's recent behavior.",
    input_fields=("user_history", "ad_title", "ad_description"),
    input_titles={"user_history": "User history", "ad_title": "Ad title", "ad_description": "Ad description"},
    label_fields={"label": (0, 1, 2, 3)},
    tags={"label": "Score"},
    instruction="You score ad-user relevance for an ads system from a user's recent queries, page views, clicks "
                "and purchases.",
    label_guidelines="Score 3 = the ad directly matches the user's main interest; 2 = same category as a main "
                     "interest but a different product, or a secondary interest; 1 = a loosely related "
                     "category; 0 = unrelated to anything the user did.",
    defect_values={"label": (0,)},
    reasoning_variants=(
        PromptVariant(
            id="steps",
            question="Why is the given relevance score appropriate for this user and ad?",
            steps=("Summarize the user's main interests from the history, citing specific actions.",
                   "Summarize what the ad promotes.",
                   "Explain how well the ad matches those interests and why the given score fits.",
                   "Conclude that the given score is appropriate.")),
        PromptVariant(
            id="rephrased",
            question="Why might this user click this ad, or ignore it?",
            steps=("Say what the user has been doing and wants.",
                   "Say what the ad offers.",
                   "Explain why that gives the given score.",
                   "Conclude that the given score is appropriate.")),
        PromptVariant(
            id="reordered",
            question="Why is the given relevance score appropriate for this user and ad?",
            steps=("Summarize what the ad promotes.",
                   "Summarize the user's main interests from the history.",
                   "Explain why the given score fits.",
                   "Conclude that the given score is appropriate.")),
    ),
    inference_example=(
        {"user_history": "searched 'beginner 5k training plan'; clicked 'how to choose running shoes'; viewed "
                         "running shoes and socks",
         "ad_title": "Lightweight running shoes for new runners",
         "ad_description": "Comfortable cushioned shoes designed for beginner joggers."},
        {"label": 3},
        "The user is starting to run and researching running shoes. The ad sells cushioned shoes for new runners, "
        "a direct match."),
)

_KEYWORD_QUERY = TaskSpec(
    name="keyword_query",
    description="Generate a realistic search query that refines an advertiser keyword for the given ad.",
    input_fields=("keyword", "ad_title", "ad_description", "landing_page"),
    input_titles={"keyword": "Keyword", "ad_title": "Ad title", "ad_description": "Ad description",
                  "landing_page": "Landing page"},
    label_fields={"query": ()},
    tags={"query": "Query"},
    instruction="You write search queries that a real user could type and under which the ad should be shown.",
    label_guidelines="A good query refines the keyword: " + " ".join(KEYWORD_RULES),
    generation_instruction="You generate and optimize search queries from an advertiser keyword, its ad and "
                           "landing page, following the matching and quality rules.",
    generation_rules=KEYWORD_RULES,
    reasoning_variants=(
        PromptVariant(
            id="steps",
            question="Why is the given query a suitable, rule-compliant refinement of the keyword?",
            steps=("Name the keyword's product category and check the query keeps it.",
                   "Explain how the query is narrower or more specific (brand, purpose, constraint, intent).",
                   "Explain why it stays relevant to the ad and landing page.")),
        PromptVariant(
            id="reordered",
            question="Why is the given query a suitable refinement of the keyword?",
            steps=("Explain what the query adds to the keyword (brand, purpose, constraint, intent).",
                   "Check that the category of the keyword is kept.",
                   "Explain why it stays relevant to the ad and landing page.")),
    ),
)

_USER_QUERY = TaskSpec(
    name="user_query",
    description="Generate a query that represents the user's current intent from recent behavior.",
    input_fields=("user_history",),
    input_titles={"user_history": "User history"},
    label_fields={"query": ()},
    tags={"query": "Query"},
    instruction="You write one search query that represents what this user is most likely looking for now, to "
                "help ad recall.",
    label_guidelines="The query must reflect the user's dominant recent interest and be specific.",
    generation_instruction="You derive intent-representative search queries from a user's recent behavior.",
    generation_rules=("Follow the user's dominant recent interest.", "Be specific enough to retrieve ads.",
                      "Vary intents across queries."),
    reasoning_variants=(
        PromptVariant(id="steps", question="Why does the given query represent this user's intent?",
                      steps=("Summarize the user's main interests, citing actions.",
                             "Explain how the query captures them.")),
    ),
)

_USER_PROFILE = TaskSpec(
    name="user_profile",
    description="Summarize a user's behavior into a profile of interests, intents and constraints.",
    input_fields=("user_history",),
    input_titles={"user_history": "User history"},
    label_fields={"profile": ()},
    tags={"profile": "Profile"},
    instruction="You summarize a user's recent behavior into a short profile: preferred categories, intents, "
                "price sensitivity, locations, topics to avoid.",
    label_guidelines="Only state what the history supports.",
    generation_instruction="You write short user profiles from behavior logs.",
    generation_rules=("State only what the history supports.", "Mention categories, intent, price level."),
    reasoning_variants=(
        PromptVariant(id="steps", question="Why does the given profile describe this user?",
                      steps=("List the actions that support each part of the profile.",
                             "Explain why nothing in the profile is unsupported.")),
    ),
)

_AD_REWRITE = TaskSpec(
    name="ad_rewrite",
    description="Rewrite an ad's title and description to read better while keeping its offer and intent.",
    input_fields=("ad_title", "ad_description", "landing_page"),
    input_titles={"ad_title": "Ad title", "ad_description": "Ad description", "landing_page": "Landing page"},
    label_fields={"title": (), "description": ()},
    tags={"title": "Title", "description": "Description"},
    instruction="You rewrite ad creatives: fix defects, keep the same product, brand, price and location facts.",
    label_guidelines="Never add claims the landing page does not support.",
    generation_instruction="You rewrite ad titles and descriptions.",
    generation_rules=("Keep product, brand, price and location facts.", "Fix typos, all caps and placeholders."),
    reasoning_variants=(
        PromptVariant(id="steps", question="Why is the given rewrite an improvement that keeps the offer?",
                      steps=("Name what the original ad offers and its defects.",
                             "Explain what the rewrite keeps and what it fixes.")),
    ),
)

_KEYWORD_EXTENSION = TaskSpec(
    name="keyword_extension",
    description="Extend an advertiser keyword with related keywords under which the ad should also match.",
    input_fields=("keyword", "ad_title", "ad_description"),
    input_titles={"keyword": "Keyword", "ad_title": "Ad title", "ad_description": "Ad description"},
    label_fields={"keywords": ()},
    tags={"keywords": "Keywords"},
    instruction="You suggest related keywords (comma-separated) for an ad.",
    label_guidelines="Keywords must keep the product category and purchase intent.",
    generation_instruction="You expand advertiser keyword lists.",
    generation_rules=("Same category.", "Semantically related variants only."),
    reasoning_variants=(
        PromptVariant(id="steps", question="Why are the given keywords good extensions?",
                      steps=("Name the keyword's category and intent.",
                             "Explain how each keyword keeps them.")),
    ),
)

_PAIRWISE = TaskSpec(
    name="pairwise_judgment",
    description="Compare a candidate model's output with the production baseline's on the same input.",
    input_fields=("task_prompt", "response_a", "response_b"),
    input_titles={"task_prompt": "Task", "response_a": "Response A (baseline)",
                  "response_b": "Response B (candidate)"},
    label_fields={"preference": ("a", "b", "tie")},
    tags={"preference": "Preference"},
    instruction="You judge which of two model responses is better for the task: quality, safety and policy "
                "adherence.",
    label_guidelines="A = the baseline is better; B = the candidate is better; Tie = no meaningful difference.",
    defect_values={"preference": ("a",)},
    value_display=_cap,
    reasoning_variants=(
        PromptVariant(id="steps", question="Why is the given preference appropriate?",
                      steps=("Summarize what the task asks.", "List strengths and weaknesses of each response.",
                             "Explain why the given preference follows.")),
    ),
)

_REGISTRY: dict[str, TaskSpec] = {t.name: t for t in (
    _QUERY_AD, _AD_USER, _KEYWORD_QUERY, _USER_QUERY, _USER_PROFILE, _AD_REWRITE, _KEYWORD_EXTENSION, _PAIRWISE)}

TASK_NAMES: tuple[str, ...] = tuple(_REGISTRY)

for _t in _REGISTRY.values():
    CONTROL_TAGS.update(_t.tags.values())


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` registered under `name`; unknown names raise `UnknownTaskError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownTaskError(f"unknown task `name`={name!r}; known tasks: {list(TASK_NAMES)}") from None


def all_tasks() -> list[TaskSpec]:
    return list(_REGISTRY.values())
