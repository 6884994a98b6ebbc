"""The synthetic ad catalog: categories, brands, price tiers, cities, ads with landing pages and creative defects.

Everything is drawn from a `random.Random(seed)`, so a seed fixes the whole world. Brands are invented names
(syllable combinations), never real companies.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["CATEGORIES", "CITIES", "DEFECTS", "PRICE_TIERS", "Ad", "Category", "make_catalog"]

# group | category | products (comma) | local service? | base price | audiences (comma)
_TABLE = """
travel|hotels|hotel,boutique hotel,resort|1|140|families,business travelers,couples
travel|flights|flight,airline ticket,round trip flight|0|320|students,families,business travelers
travel|car rental|rental car,suv rental,van rental|1|55|families,road trips,business travelers
travel|airport parking|airport parking,long-term parking,valet parking|1|18|frequent flyers,weekend trips,families
travel|cruises|cruise,river cruise,caribbean cruise|0|900|couples,retirees,families
travel|vacation rentals|beach house,cabin rental,vacation apartment|1|210|families,groups,couples
electronics|laptops|laptop,gaming laptop,ultrabook|0|950|students,gamers,business
electronics|smartphones|smartphone,android phone,camera phone|0|650|seniors,teens,photographers
electronics|headphones|wireless headphones,earbuds,noise cancelling headphones|0|120|runners,commuters,gamers
electronics|televisions|4k tv,oled tv,smart tv|0|700|sports fans,movie lovers,small rooms
electronics|cameras|mirrorless camera,action camera,dslr camera|0|800|beginners,vloggers,travelers
electronics|smartwatches|smartwatch,fitness tracker,gps watch|0|220|runners,swimmers,seniors
electronics|tablets|tablet,drawing tablet,kids tablet|0|330|artists,kids,students
home|furniture|sofa,dining table,office chair|0|600|small apartments,families,home offices
home|mattresses|memory foam mattress,hybrid mattress,mattress topper|0|800|side sleepers,back pain,couples
home|kitchen appliances|blender,air fryer,espresso machine|0|130|small kitchens,families,coffee lovers
home|home cleaning|house cleaning service,carpet cleaning,deep cleaning|1|120|pet owners,busy families,move out
home|plumbing|plumber,water heater repair,drain cleaning|1|180|emergencies,old homes,landlords
home|roofing|roof repair,gutter installation,roof replacement|1|2500|storm damage,old homes,landlords
home|gardening|lawn mower,garden hose,hedge trimmer|0|260|small yards,large yards,beginners
home|home security|security camera,smart doorbell,alarm system|0|180|renters,homeowners,small businesses
fashion|running shoes|running shoes,trail running shoes,racing flats|0|130|beginners,marathon runners,flat feet
fashion|winter jackets|winter jacket,down parka,ski jacket|0|240|hiking,city commuting,kids
fashion|jewelry|engagement ring,necklace,gold earrings|0|900|weddings,anniversaries,gifts
fashion|handbags|handbag,leather tote,crossbody bag|0|260|work,travel,gifts
fashion|watches|dress watch,dive watch,automatic watch|0|450|gifts,divers,collectors
fashion|eyewear|prescription glasses,sunglasses,blue light glasses|0|150|kids,drivers,computer work
sports|bicycles|road bike,electric bike,mountain bike|0|1200|commuters,beginners,trail riding
sports|fitness equipment|treadmill,dumbbells,rowing machine|0|700|home gyms,small spaces,beginners
sports|camping gear|tent,sleeping bag,camping stove|0|180|backpacking,families,winter camping
sports|golf|golf clubs,golf balls,golf lessons|0|400|beginners,seniors,women
sports|yoga|yoga mat,yoga class,yoga retreat|1|60|beginners,pregnancy,seniors
auto|used cars|used suv,used sedan,used pickup truck|1|18000|families,first-time buyers,commuters
auto|car insurance|car insurance,auto insurance quote,teen driver insurance|0|95|young drivers,seniors,families
auto|tires|winter tires,all-season tires,truck tires|1|150|snow,suvs,long commutes
auto|auto repair|brake repair,oil change,transmission repair|1|120|older cars,fleets,commuters
finance|credit cards|travel credit card,cash back credit card,student credit card|0|0|students,travelers,small businesses
finance|mortgages|mortgage refinance,home loan,first-time buyer mortgage|0|0|first-time buyers,veterans,retirees
finance|personal loans|personal loan,debt consolidation loan,home improvement loan|0|0|bad credit,renovations,students
finance|tax preparation|tax preparation,tax software,small business tax filing|1|150|freelancers,small businesses,families
health|dental care|dentist,teeth whitening,dental implants|1|200|kids,seniors,emergencies
health|gyms|gym membership,personal trainer,crossfit gym|1|45|beginners,seniors,students
health|vitamins|multivitamin,protein powder,vitamin d|0|30|athletes,seniors,vegans
health|eye care|eye exam,contact lenses,lasik surgery|1|120|kids,drivers,seniors
health|physical therapy|physical therapy,sports massage,back pain clinic|1|110|athletes,seniors,office workers
education|online courses|coding bootcamp,online mba,data science course|0|1500|career changers,professionals,students
education|language learning|spanish lessons,language app,french course|0|20|travelers,kids,beginners
education|tutoring|math tutor,sat prep,reading tutor|1|60|kids,high school students,college students
food|meal kits|meal kit,vegan meal kit,keto meal delivery|0|70|families,vegans,busy professionals
food|coffee|coffee beans,espresso pods,cold brew|0|18|home baristas,offices,gifts
food|pizza delivery|pizza delivery,gluten free pizza,late night pizza|1|22|parties,families,students
food|wine|red wine,wine club,champagne|0|35|gifts,dinner parties,collectors
services|moving services|movers,storage unit,long distance movers|1|900|apartments,families,offices
services|wedding planning|wedding venue,wedding photographer,wedding planner|1|3000|small weddings,outdoor weddings,destination weddings
services|legal services|divorce lawyer,personal injury lawyer,immigration lawyer|1|300|families,accident victims,businesses
services|web hosting|web hosting,domain name,wordpress hosting|0|10|small businesses,bloggers,online stores
pets|pet food|dog food,cat food,grain free dog food|0|55|puppies,senior dogs,kittens
pets|pet insurance|pet insurance,dog insurance,cat insurance|0|35|puppies,older pets,multiple pets
pets|veterinary|vet clinic,pet vaccination,emergency vet|1|90|puppies,cats,exotic pets
kids|baby gear|stroller,car seat,baby monitor|0|250|newborns,twins,travel
kids|toys|lego set,board game,remote control car|0|45|toddlers,teens,family game night
beauty|skincare|face moisturizer,sunscreen,retinol serum|0|35|dry skin,sensitive skin,oily skin
beauty|hair salons|haircut,hair coloring,balayage|1|70|men,curly hair,weddings
beauty|fragrance|perfume,cologne,gift set fragrance|0|90|gifts,summer,evening wear
entertainment|concert tickets|concert tickets,festival pass,vip concert package|1|120|fans,groups,students
entertainment|streaming services|movie streaming,music streaming,sports streaming|0|12|families,students,sports fans
entertainment|video games|video game console,gaming headset,gaming chair|0|450|kids,streamers,competitive gamers
"""

CITIES: tuple[str, ...] = (
    "Seattle", "Portland", "Denver", "Austin", "Dallas", "Houston", "Chicago", "Boston", "Atlanta", "Miami",
    "Phoenix", "San Diego", "Charlotte", "Nashville", "Detroit", "Minneapolis", "Orlando", "Tampa", "Raleigh",
    "Columbus", "London", "Manchester", "Sydney", "Melbourne", "Paris", "Lyon", "Berlin", "Munich", "Toronto",
    "Vancouver",
)

PRICE_TIERS: dict[str, float] = {"budget": 0.55, "mid": 1.0, "premium": 1.8, "luxury": 3.2}
_TIER_WORDS = {"budget": ("affordable", "low-cost", "budget"), "mid": ("quality", "great value", "reliable"),
               "premium": ("premium", "high-end", "professional"), "luxury": ("luxury", "exclusive", "5-star")}

#: Creative defects that make an ad's quality label "bad".
DEFECTS: tuple[str, ...] = ("typo", "all_caps", "placeholder", "truncated", "unsupported_claim")

_SYL = ("ar", "bel", "cor", "dan", "el", "fa", "gor", "hal", "is", "jun", "ka", "lum", "mor", "nex", "ol", "pra",
        "quin", "ros", "sol", "tar", "ul", "vex", "wen", "yor", "zen", "bri", "cal", "dor", "fen", "lin")
_SUFFIX = ("", "", "ly", "io", "a", "co", " & Co", " Labs", " Direct", "ix")


@dataclass(frozen=True)
class Category:
    group: str
    name: str
    products: tuple[str, ...]
    local: bool
    base_price: float
    audiences: tuple[str, ...]
    brands: tuple[str, ...] = ()


@dataclass
class Ad:
    id: str
    category: str
    group: str
    product: str
    brand: str
    tier: str
    price: float
    city: str | None
    title: str
    description: str
    url: str
    landing_page: str
    defects: list[str] = field(default_factory=list)

    @property
    def quality_label(self) -> str:
        return "bad" if self.defects else "good"


def _parse_table() -> list[Category]:
    out = []
    for line in _TABLE.strip().splitlines():
        g, n, prods, local, price, aud = line.split("|")
        out.append(Category(g, n, tuple(prods.split(",")), local == "1", float(price), tuple(aud.split(","))))
    return out


CATEGORIES: tuple[Category, ...] = tuple(_parse_table())


def _brand(rng: random.Random, used: set[str]) -> str:
    while True:
        name = (rng.choice(_SYL) + rng.choice(_SYL)).capitalize() + rng.choice(_SUFFIX)
        if name not in used and len(name) > 3:
            used.add(name)
            return name


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in s.lower()).strip("-")


def _price_text(cat: Category, price: float) -> str:
    if cat.base_price == 0:
        return ""
    return f"${price:,.0f}"


def _typo(rng: random.Random, text: str) -> str:
    words = text.split()
    idx = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not idx:
        return text + " teh"
    i = rng.choice(idx)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def make_catalog(rng: random.Random, ads_per_category: int = 14, defect_rate: float = 0.12
                 ) -> tuple[list[Category], list[Ad]]:
    """Categories (with invented brands) and their ads. ~`defect_rate` of ads carry one creative defect."""
    used: set[str] = set()
    cats = [Category(c.group, c.name, c.products, c.local, c.base_price, c.audiences,
                     tuple(_brand(rng, used) for _ in range(4))) for c in CATEGORIES]
    ads: list[Ad] = []
    for ci, cat in enumerate(cats):
        for k in range(ads_per_category):
            product = cat.products[k % len(cat.products)]
            brand = rng.choice(cat.brands)
            tier = rng.choices(list(PRICE_TIERS), weights=(3, 4, 2, 1))[0]
            price = round(cat.base_price * PRICE_TIERS[tier] * rng.uniform(0.85, 1.15), 0)
            city = rng.choice(CITIES) if cat.local else None
            tw = rng.choice(_TIER_WORDS[tier])
            where = f" in {city}" if city else ""
            pt = _price_text(cat, price)
            aud = rng.choice(cat.audiences)
            title = rng.choice((f"{brand} {tw.title()} {product.title()}{where}",
                                f"{tw.capitalize()} {product}{where} | {brand}",
                                f"{product.title()} by {brand}{where}"))
            from_price = f" from {pt}" if pt else ""
            description = rng.choice((
                f"{tw.capitalize()} {product}{from_price}. Designed for {aud}. Order online today.",
                f"Shop {brand}'s {tw} {product} for {aud}{from_price}. Free returns.",
                f"{brand} offers {tw} {product}{where}{from_price}. Trusted by {aud}.",
            ))
            url = f"www.{_slug(brand).replace('-', '')}.com/{_slug(product)}"
            landing = (f"{brand} | {cat.name.title()}. Our {tw} {product} collection{where} is made for {aud}. "
                       f"{'Prices' + from_price + '.' if pt else 'Apply online in minutes.'} "
                       f"Also see: {', '.join(p for p in cat.products if p != product)}.")
            ad = Ad(id=f"ad{ci:02d}{k:02d}", category=cat.name, group=cat.group, product=product, brand=brand,
                    tier=tier, price=price, city=city, title=title, description=description, url=url,
                    landing_page=landing)
            if rng.random() < defect_rate:
                d = rng.choice(DEFECTS)
                ad.defects.append(d)
                if d == "typo":
                    ad.description = _typo(rng, ad.description)
                elif d == "all_caps":
                    ad.title = ad.title.upper() + "!!!"
                elif d == "placeholder":
                    ad.description = ad.description.replace(product, "{KeyWord:" + product + "}", 1)
                    if "{KeyWord" not in ad.description:
                        ad.description = "{KeyWord} " + ad.description
                elif d == "truncated":
                    cut = max(12, len(ad.description) // 2)
                    ad.description = ad.description[:cut].rstrip() + "..."
                elif d == "unsupported_claim":
                    ad.description += " #1 in the world, 100% guaranteed results or it's free forever!"
            ads.append(ad)
    return cats, ads
