"""Synthetic e-commerce logs with known true probabilities.

The world: users and items with latent preference vectors, Zipf-like popularity, categories, shops, brands and
prices. Each impression has context (position, hour, device). The funnel is
    impression -> click -> micro behaviours (view_pictures, read_reviews, ask_seller)
                       -> macro behaviours (cart, favourite) -> purchase,
where each step depends on the features and on the earlier steps: P(macro) rises with a micro behaviour, and
P(purchase) rises with micro and much more with macro behaviour (purchases without macro behaviour still happen).
The truth columns are the exact probabilities the sampler used, marginalised over the hidden micro/macro states.

Generation is parallel: one Spark task per (day, part), each with its own numpy RNG seeded by (seed, day, part),
so the output is identical for a seed regardless of executors. The world itself (a few MB of arrays) is
rebuilt from the seed inside each Python worker. Functions here are pure; simulate_stage.py writes the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np

from cvr.config import ConfigError, SimulateConfig

PRESETS = {
    # Close to production display/e-commerce funnels.
    "default": {"target_ctr": 0.045, "target_cvr": 0.02, "target_micro_rate": 0.40, "target_macro_rate": 0.10},
    # Close to Ali-CCP: CTR ~3.9%, about 0.5% purchases per click.
    "sparse": {"target_ctr": 0.039, "target_cvr": 0.005, "target_micro_rate": 0.30, "target_macro_rate": 0.05},
}

ACTIONS = ("view_pictures", "read_reviews", "ask_seller", "cart", "favourite")
MICRO_ACTIONS = (0, 1, 2)
MACRO_ACTIONS = (3, 4)
DEVICES = ("android", "ios", "pc", "other")
REC_IMPRESSION, REC_CLICK, REC_BEHAVIOUR, REC_CONVERSION = 0, 1, 2, 3
KEY_OK, KEY_NULL, KEY_UNKNOWN = 0, 1, 2  # key_state of a generated row
UNKNOWN_ROW_OFFSET = 90_000_000  # unknown impression ids point past any real row of a task
MAX_ROWS_PER_TASK = UNKNOWN_ROW_OFFSET
MIN_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S = 900, 3600  # skewed events are this far before their impression

# Effect sizes of the funnel (logit scale). Intercepts are calibrated to the target rates.
W_CLICK_AFFINITY, W_CLICK_POSITION, W_CLICK_HOUR = 0.8, -0.05, 0.2
DEVICE_CLICK = np.array([0.1, 0.15, -0.1, -0.3])
W_MICRO_AFFINITY, W_MICRO_QUALITY = 0.5, 0.3
W_MACRO_AFFINITY, W_MACRO_PRICE, W_MACRO_GIVEN_MICRO = 0.5, -0.2, 1.2
W_BUY_AFFINITY, W_BUY_PRICE, W_BUY_GIVEN_MICRO, W_BUY_GIVEN_MACRO = 0.6, -0.35, 0.7, 2.3
DEVICE_BUY = np.array([0.0, 0.1, 0.2, -0.2])
SEGMENT_SHARE = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
SEGMENT_BUY = np.array([-0.4, -0.1, 0.0, 0.2, 0.5])
CITIES = 30
FAVOURITES_PER_USER = 4
HOUR_WEIGHTS = 1.0 + 0.9 * np.cos(2 * np.pi * (np.arange(24) - 20) / 24)
HOUR_WEIGHTS = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()
CALIBRATION_ROWS = 200_000


@dataclass(frozen=True)
class Intercepts:
    click: float = 0.0
    micro: float = 0.0
    macro: float = 0.0
    buy: float = 0.0


@dataclass(frozen=True)
class SimParams:
    """Everything a generator task needs (picklable); built by resolve_params."""

    seed: int
    start_date: str
    days: int
    impressions_per_day: int
    partitions: int
    users: int
    items: int
    categories: int
    shops: int
    brands: int
    latent_dim: int
    malformed_rate: float
    repeat_exposure_rate: float
    late_conversion_share: float
    late_conversion_mean_hours: float
    target_ctr: float
    target_cvr: float
    target_micro_rate: float
    target_macro_rate: float
    preset: str = "default"
    intercepts: Intercepts = Intercepts()

    def day(self, index: int) -> dt.date:
        return dt.date.fromisoformat(self.start_date) + dt.timedelta(days=index)

    def ds_list(self) -> list[str]:
        return [self.day(i).isoformat() for i in range(self.days)]

    def rows_in_task(self, part: int) -> int:
        base, extra = divmod(self.impressions_per_day, self.partitions)
        return base + (1 if part < extra else 0)

    def world_key(self) -> tuple:
        return (self.seed, self.users, self.items, self.categories, self.shops, self.brands, self.latent_dim)


def resolve_params(cfg: SimulateConfig, calibrate: bool = True) -> SimParams:
    """Apply the preset to unset targets, validate, and calibrate the funnel intercepts to the targets."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"simulate.preset: expected one of {sorted(PRESETS)}, got {cfg.preset!r}")
    values = dataclasses.asdict(cfg)
    for key, preset_value in PRESETS[cfg.preset].items():
        if values[key] is None:
            values[key] = preset_value
    _validate(values)
    params = SimParams(**{f.name: values[f.name] for f in dataclasses.fields(SimParams) if f.name in values})
    if calibrate:
        params = dataclasses.replace(params, intercepts=calibrate_intercepts(params))
    return params


def _validate(v: dict) -> None:
    try:
        dt.date.fromisoformat(v["start_date"])
    except ValueError as exc:
        raise ConfigError(f"simulate.start_date: expected YYYY-MM-DD, got {v['start_date']!r}") from exc
    rules = [
        ("impressions_per_day", v["impressions_per_day"] >= 1, "an integer >= 1"),
        ("partitions", v["partitions"] >= 1, "an integer >= 1"),
        ("users", v["users"] >= FAVOURITES_PER_USER, f"an integer >= {FAVOURITES_PER_USER}"),
        ("items", v["items"] >= 2, "an integer >= 2"),
        ("categories", 1 <= v["categories"] <= v["items"], "between 1 and simulate.items"),
        ("shops", v["shops"] >= 1, "an integer >= 1"),
        ("brands", v["brands"] >= 1, "an integer >= 1"),
        ("latent_dim", v["latent_dim"] >= 1, "an integer >= 1"),
        ("repeat_exposure_rate", 0 <= v["repeat_exposure_rate"] <= 1, "a rate in [0, 1]"),
        ("late_conversion_share", 0 <= v["late_conversion_share"] <= 1, "a rate in [0, 1]"),
        ("late_conversion_mean_hours", v["late_conversion_mean_hours"] > 0, "a number > 0"),
    ]
    rules += [(k, 0 < v[k] < 1, "a rate in (0, 1)") for k in PRESETS["default"]]
    for key, ok, expected in rules:
        if not ok:
            raise ConfigError(f"simulate.{key}: expected {expected}, got {v[key]!r}")
    if v["impressions_per_day"] / v["partitions"] >= MAX_ROWS_PER_TASK:
        raise ConfigError(f"simulate.partitions: too few for {v['impressions_per_day']} impressions per day")


# ----------------------------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    user_cdf: np.ndarray
    item_cdf: np.ndarray
    user_vec: np.ndarray
    item_vec: np.ndarray
    affinity_scale: float
    user_segment: np.ndarray
    user_city: np.ndarray
    user_device: np.ndarray
    user_click_bias: np.ndarray
    user_buy_bias: np.ndarray
    favourites: np.ndarray  # [users, FAVOURITES_PER_USER] item indices for repeated exposures
    item_category: np.ndarray
    item_shop: np.ndarray
    item_brand: np.ndarray
    item_price: np.ndarray
    item_price_z: np.ndarray  # log price relative to its category, in category standard deviations
    item_quality: np.ndarray
    item_buy_quality: np.ndarray
    category_buy_effect: np.ndarray

    def affinity(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", self.user_vec[users], self.item_vec[items]) * self.affinity_scale


def zipf_cdf(n: int, exponent: float, offset: float, rng: np.random.Generator) -> np.ndarray:
    """Cumulative popularity over ids 0..n-1: weights 1/(rank+offset)^exponent, ranks shuffled over the ids."""
    weights = 1.0 / (np.arange(n) + offset) ** exponent
    weights = weights[rng.permutation(n)]
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def draw(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(cdf) - 1)


@functools.lru_cache(maxsize=4)
def _build_world(seed: int, users: int, items: int, categories: int, shops: int, brands: int, k: int) -> World:
    rng = np.random.default_rng([seed, 0x5EED])
    user_cdf = zipf_cdf(users, 0.9, 20.0, rng)
    item_cdf = zipf_cdf(items, 1.0, 5.0, rng)
    item_category = draw(zipf_cdf(categories, 0.8, 2.0, rng), rng, items)
    category_vec = rng.normal(size=(categories, k))
    item_vec = 0.7 * category_vec[item_category] + 0.7 * rng.normal(size=(items, k))
    user_vec = rng.normal(size=(users, k))
    pairs_u, pairs_i = rng.integers(0, users, 20000), rng.integers(0, items, 20000)
    raw = np.einsum("ij,ij->i", user_vec[pairs_u], item_vec[pairs_i])
    category_log_price = rng.uniform(2.0, 5.5, categories)
    log_price_noise = rng.normal(0.0, 0.5, items)
    favourites = draw(item_cdf, rng, users * FAVOURITES_PER_USER).reshape(users, FAVOURITES_PER_USER)
    return World(
        user_cdf=user_cdf,
        item_cdf=item_cdf,
        user_vec=user_vec,
        item_vec=item_vec,
        affinity_scale=1.0 / float(raw.std()),
        user_segment=rng.choice(len(SEGMENT_SHARE), users, p=SEGMENT_SHARE),
        user_city=draw(zipf_cdf(CITIES, 1.0, 1.0, rng), rng, users),
        user_device=rng.choice(len(DEVICES), users, p=[0.5, 0.3, 0.15, 0.05]),
        user_click_bias=rng.normal(0.0, 0.3, users),
        user_buy_bias=rng.normal(0.0, 0.3, users),
        favourites=favourites,
        item_category=item_category,
        item_shop=draw(zipf_cdf(shops, 1.0, 3.0, rng), rng, items),
        item_brand=draw(zipf_cdf(brands, 1.0, 3.0, rng), rng, items),
        item_price=np.round(np.exp(category_log_price[item_category] + log_price_noise), 2),
        item_price_z=log_price_noise / 0.5,
        item_quality=rng.normal(0.0, 0.4, items),
        item_buy_quality=rng.normal(0.0, 0.4, items),
        category_buy_effect=rng.normal(0.0, 0.4, categories),
    )


def build_world(params: SimParams) -> World:
    return _build_world(*params.world_key())


# ----------------------------------------------------------------------------------------------- features and probabilities


def draw_impressions(world: World, params: SimParams, rng: np.random.Generator, n: int, day_index: int) -> dict:
    """Raw features and timestamps (epoch microseconds) of n impressions on day `day_index`."""
    user = draw(world.user_cdf, rng, n)
    favourite = rng.random(n) < params.repeat_exposure_rate
    item = np.where(
        favourite,
        world.favourites[user, rng.integers(0, FAVOURITES_PER_USER, n)],
        draw(world.item_cdf, rng, n),
    )
    device = np.where(rng.random(n) < 0.85, world.user_device[user], rng.integers(0, len(DEVICES), n))
    hour = rng.choice(24, n, p=HOUR_WEIGHTS)
    day_start = dt.datetime.combine(params.day(day_index), dt.time(), tzinfo=dt.UTC)
    seconds = int(day_start.timestamp()) + hour * 3600 + rng.integers(0, 3600, n)
    return {
        "user": user,
        "item": item,
        "position": np.minimum(rng.geometric(0.18, n), 50),
        "device": device,
        "hour": hour,
        "ts": seconds.astype(np.int64) * 1_000_000 + rng.integers(0, 1_000_000, n),
    }


def funnel_scores(world: World, f: dict) -> dict:
    """Logit contributions of the features to each funnel edge (intercepts and behaviour terms excluded)."""
    user, item = f["user"], f["item"]
    affinity = world.affinity(user, item)
    price_z = world.item_price_z[item]
    hour_effect = W_CLICK_HOUR * np.cos(2 * np.pi * (f["hour"] - 21) / 24)
    return {
        "click": W_CLICK_AFFINITY * affinity
        + world.item_quality[item]
        + world.user_click_bias[user]
        + W_CLICK_POSITION * (f["position"] - 1)
        + DEVICE_CLICK[f["device"]]
        + hour_effect,
        "micro": W_MICRO_AFFINITY * affinity + W_MICRO_QUALITY * world.item_quality[item],
        "macro": W_MACRO_AFFINITY * affinity + W_MACRO_PRICE * price_z + 0.3 * world.item_buy_quality[item],
        "buy": W_BUY_AFFINITY * affinity
        + world.item_buy_quality[item]
        + world.category_buy_effect[world.item_category[item]]
        + SEGMENT_BUY[world.user_segment[user]]
        + world.user_buy_bias[user]
        + W_BUY_PRICE * price_z
        + DEVICE_BUY[f["device"]],
    }


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def funnel_probabilities(scores: dict, b: Intercepts) -> dict:
    """Every conditional probability the sampler uses, and the truth marginals over micro/macro states."""
    p_click = sigmoid(b.click + scores["click"])
    p_micro = sigmoid(b.micro + scores["micro"])
    p_macro_given = [sigmoid(b.macro + scores["macro"] + W_MACRO_GIVEN_MICRO * m) for m in (0, 1)]
    p_buy_given = {
        (m, g): sigmoid(b.buy + scores["buy"] + W_BUY_GIVEN_MICRO * m + W_BUY_GIVEN_MACRO * g)
        for m in (0, 1)
        for g in (0, 1)
    }
    p_m = {0: 1.0 - p_micro, 1: p_micro}
    p_g_given_m = {(m, 1): p_macro_given[m] for m in (0, 1)} | {(m, 0): 1.0 - p_macro_given[m] for m in (0, 1)}
    p_cvr = sum(p_m[m] * p_g_given_m[(m, g)] * p_buy_given[(m, g)] for m in (0, 1) for g in (0, 1))
    return {
        "p_click": p_click,
        "p_micro": p_micro,
        "p_macro_given": p_macro_given,
        "p_buy_given": p_buy_given,
        "p_macro": p_m[0] * p_macro_given[0] + p_m[1] * p_macro_given[1],
        "p_cvr": p_cvr,
        "p_ctcvr": p_click * p_cvr,
    }


def _solve_intercept(rate_for, target: float) -> float:
    """Bisection on an intercept: rate_for(b) increases with b."""
    low, high = -25.0, 15.0
    for _ in range(45):
        mid = 0.5 * (low + high)
        if rate_for(mid) < target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def calibrate_intercepts(params: SimParams) -> Intercepts:
    """Intercepts giving the target CTR and per-click micro, macro and purchase rates on a fixed sample."""
    world = build_world(params)
    rng = np.random.default_rng([params.seed, 0xCA1B])
    scores = funnel_scores(world, draw_impressions(world, params, rng, CALIBRATION_ROWS, 0))
    b = Intercepts()

    def click_weighted(key: str, field: str):
        def rate(value: float) -> float:
            p = funnel_probabilities(scores, dataclasses.replace(b, **{field: value}))
            return float(np.average(p[key], weights=p["p_click"])) if key != "p_click" else float(p[key].mean())

        return rate

    b = dataclasses.replace(b, click=_solve_intercept(click_weighted("p_click", "click"), params.target_ctr))
    b = dataclasses.replace(b, micro=_solve_intercept(click_weighted("p_micro", "micro"), params.target_micro_rate))
    b = dataclasses.replace(b, macro=_solve_intercept(click_weighted("p_macro", "macro"), params.target_macro_rate))
    return dataclasses.replace(b, buy=_solve_intercept(click_weighted("p_cvr", "buy"), params.target_cvr))


# ----------------------------------------------------------------------------------------------- one generator task


EVENT_FIELDS = (
    # name, numpy/arrow type, Spark type
    ("rec", "int32", "int"),
    ("day_key", "int32", "int"),  # yyyymmdd of the impression's day
    ("part", "int32", "int"),
    ("row", "int64", "bigint"),  # impression index within the task
    ("seq", "int64", "bigint"),  # event index within the task and record type (shared by exact duplicates)
    ("ts_us", "int64", "bigint"),
    ("key_state", "int32", "int"),
    ("duplicate", "bool", "boolean"),
    ("action", "int32", "int"),
    ("amount", "float64", "double"),
    ("user", "int32", "int"),
    ("item", "int32", "int"),
    ("category", "int32", "int"),
    ("shop", "int32", "int"),
    ("brand", "int32", "int"),
    ("segment", "int32", "int"),
    ("city", "int32", "int"),
    ("price", "float64", "double"),
    ("position", "int32", "int"),
    ("device", "int32", "int"),
    ("p_click", "float64", "double"),
    ("p_micro", "float64", "double"),
    ("p_macro", "float64", "double"),
    ("p_cvr", "float64", "double"),
    ("p_ctcvr", "float64", "double"),
)
EVENT_SCHEMA_DDL = ", ".join(f"{name} {spark}" for name, _, spark in EVENT_FIELDS)


def _arrow_table(columns: dict, n: int):
    import pyarrow as pa

    arrays = []
    for name, np_type, _ in EVENT_FIELDS:
        arrow_type = pa.from_numpy_dtype(np.dtype(np_type))
        arrays.append(
            pa.array(np.asarray(columns[name]).astype(np_type), arrow_type)
            if name in columns
            else pa.nulls(n, arrow_type)
        )
    return pa.Table.from_arrays(arrays, names=[name for name, _, _ in EVENT_FIELDS])


def _malform_events(rng: np.random.Generator, ts: np.ndarray, impression_ts: np.ndarray, rate: float):
    """Malformed share of event rows: null key, unknown impression, clock skew, exact duplicate (a quarter each)."""
    n = len(ts)
    kind = np.where(rng.random(n) < rate, rng.integers(0, 4, n), -1)
    key_state = np.select([kind == 0, kind == 1], [KEY_NULL, KEY_UNKNOWN], KEY_OK)
    skew_us = rng.integers(MIN_CLOCK_SKEW_S, MAX_CLOCK_SKEW_S, n) * 1_000_000
    ts = np.where(kind == 2, impression_ts - skew_us, ts)
    copies = np.where(kind == 3, 2, 1)
    return key_state, ts, copies


def _event_rows(rec: int, rows: np.ndarray, ts: np.ndarray, impression_ts: np.ndarray, rate: float, rng, extra: dict):
    key_state, ts, copies = _malform_events(rng, ts, impression_ts, rate)
    seq = np.arange(len(rows))
    repeat = np.repeat(np.arange(len(rows)), copies)
    duplicate = np.zeros(len(repeat), bool)
    duplicate[1:] = repeat[1:] == repeat[:-1]
    columns = {"rec": np.full(len(repeat), rec), "row": rows[repeat], "seq": seq[repeat], "ts_us": ts[repeat]}
    columns |= {"key_state": key_state[repeat], "duplicate": duplicate}
    columns |= {k: v[repeat] for k, v in extra.items()}
    return columns, len(repeat)


def generate_task(params: SimParams, day_index: int, part: int):
    """All rows (impressions with truth, clicks, behaviours, conversions) of one task, as one Arrow table."""
    import pyarrow as pa

    world = build_world(params)
    rng = np.random.default_rng([params.seed, day_index, part])
    n = params.rows_in_task(part)
    f = draw_impressions(world, params, rng, n, day_index)
    p = funnel_probabilities(funnel_scores(world, f), params.intercepts)
    day_key = int(params.day(day_index).strftime("%Y%m%d"))

    tables = [_impression_table(world, f, p, rng, n, params.malformed_rate)]
    tables += _funnel_tables(world, f, p, rng, params)
    table = pa.concat_tables(tables)
    constant = {
        "day_key": pa.array(np.full(table.num_rows, day_key, np.int32)),
        "part": pa.array(np.full(table.num_rows, part, np.int32)),
    }
    for name, column in constant.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _impression_table(world: World, f: dict, p: dict, rng, n: int, rate: float):
    """Impression rows with truth; malformed: null user id or an exact duplicate row (half the rate each)."""
    bad = rng.random(n) < rate
    null_user = bad & (rng.random(n) < 0.5)
    copies = np.where(bad & ~null_user, 2, 1)
    repeat = np.repeat(np.arange(n), copies)
    duplicate = np.zeros(len(repeat), bool)
    duplicate[1:] = repeat[1:] == repeat[:-1]
    user, item = f["user"], f["item"]
    columns = {
        "rec": np.full(n, REC_IMPRESSION),
        "row": np.arange(n),
        "seq": np.arange(n),
        "ts_us": f["ts"],
        "key_state": np.where(null_user, KEY_NULL, KEY_OK),
        "user": user,
        "item": item,
        "category": world.item_category[item],
        "shop": world.item_shop[item],
        "brand": world.item_brand[item],
        "segment": world.user_segment[user],
        "city": world.user_city[user],
        "price": world.item_price[item],
        "position": f["position"],
        "device": f["device"],
    } | {k: p[k] for k in ("p_click", "p_micro", "p_macro", "p_cvr", "p_ctcvr")}
    columns = {k: np.asarray(v)[repeat] for k, v in columns.items()}
    columns["duplicate"] = duplicate
    return _arrow_table(columns, len(repeat))


def _funnel_tables(world: World, f: dict, p: dict, rng, params: SimParams) -> list:
    """Sample click -> micro -> macro -> purchase with the same probabilities as the truth, then event rows."""
    n = len(f["ts"])
    clicked = np.flatnonzero(rng.random(n) < p["p_click"])
    c = len(clicked)
    micro = rng.random(c) < p["p_micro"][clicked]
    p_macro = np.where(micro, p["p_macro_given"][1][clicked], p["p_macro_given"][0][clicked])
    macro = rng.random(c) < p_macro
    p_buy = np.select(
        [~micro & ~macro, ~micro & macro, micro & ~macro],
        [p["p_buy_given"][(m, g)][clicked] for m, g in ((0, 0), (0, 1), (1, 0))],
        p["p_buy_given"][(1, 1)][clicked],
    )
    buy = rng.random(c) < p_buy
    impression_ts = f["ts"][clicked]
    click_ts = impression_ts + ((1.0 + rng.exponential(20.0, c)) * 1e6).astype(np.int64)
    rate = params.malformed_rate
    out = []

    columns, m = _event_rows(REC_CLICK, clicked, click_ts, impression_ts, rate, rng, {})
    out.append(_arrow_table(columns, m))

    behaviour_rows, behaviour_ts, behaviour_action = _behaviours(rng, micro, macro, click_ts)
    columns, m = _event_rows(
        REC_BEHAVIOUR,
        clicked[behaviour_rows],
        behaviour_ts,
        impression_ts[behaviour_rows],
        rate,
        rng,
        {"action": behaviour_action},
    )
    out.append(_arrow_table(columns, m))

    buyers = np.flatnonzero(buy)
    late = rng.random(len(buyers)) < params.late_conversion_share
    delay_s = 60.0 + np.where(
        late,
        rng.exponential(params.late_conversion_mean_hours * 3600.0, len(buyers)),
        rng.exponential(900.0, len(buyers)),
    )
    purchase_ts = click_ts[buyers] + (delay_s * 1e6).astype(np.int64)
    quantity = 1 + rng.poisson(0.15, len(buyers))
    amount = np.round(world.item_price[f["item"][clicked[buyers]]] * quantity, 2)
    columns, m = _event_rows(
        REC_CONVERSION, clicked[buyers], purchase_ts, impression_ts[buyers], rate, rng, {"amount": amount}
    )
    out.append(_arrow_table(columns, m))
    return out


def _behaviours(rng, micro: np.ndarray, macro: np.ndarray, click_ts: np.ndarray):
    """Detail-page actions of clicked impressions: (index into the clicks, ts, action code), time-ordered per click."""
    c = len(micro)
    primary = rng.choice(len(MICRO_ACTIONS), c, p=[0.55, 0.3, 0.15])
    counts = []
    for action in MICRO_ACTIONS:
        happens = micro & ((primary == action) | (rng.random(c) < 0.25))
        counts.append(happens * (1 + (rng.random(c) < 0.15)))  # sometimes the same action twice
    macro_kind = rng.choice(3, c, p=[0.6, 0.25, 0.15])  # cart, favourite, both
    counts.append(macro & (macro_kind != 1))
    counts.append(macro & (macro_kind != 0))
    rows, actions = [], []
    for action, count in zip(MICRO_ACTIONS + MACRO_ACTIONS, counts, strict=True):
        idx = np.repeat(np.arange(c), count.astype(np.int64))
        rows.append(idx)
        actions.append(np.full(len(idx), action))
    rows, actions = np.concatenate(rows), np.concatenate(actions)
    is_macro = actions >= MACRO_ACTIONS[0]
    delay_s = np.where(is_macro, 30.0 + rng.exponential(120.0, len(rows)), 2.0 + rng.exponential(45.0, len(rows)))
    return rows, click_ts[rows] + (delay_s * 1e6).astype(np.int64), actions


# ----------------------------------------------------------------------------------------------- Spark transforms


def simulate_events(spark, params: SimParams):
    """All generated rows of all days: one Spark task per (day, part); schema EVENT_SCHEMA_DDL."""
    n_tasks = params.days * params.partitions

    def generate(batches):
        for batch in batches:
            for task_id in batch.column(0).to_pylist():
                day_index, part = divmod(int(task_id), params.partitions)
                yield from generate_task(params, day_index, part).to_batches(max_chunksize=65536)

    return spark.range(0, n_tasks, 1, numPartitions=n_tasks).mapInArrow(generate, EVENT_SCHEMA_DDL)


def _key(row_col: str):
    from pyspark.sql import functions as F

    return F.concat(
        F.col("day_key").cast("string"),
        F.lit("-"),
        F.lpad(F.col("part").cast("string"), 3, "0"),
        F.lit("-"),
        F.lpad(F.col(row_col).cast("string"), 8, "0"),
    )


def _impression_id():
    from pyspark.sql import functions as F

    known = F.concat(F.lit("i"), _key("row"))
    unknown = F.concat(F.lit("i"), _key("unknown_row"))
    return (
        F.when(F.col("key_state") == KEY_NULL, F.lit(None).cast("string"))
        .when(F.col("key_state") == KEY_UNKNOWN, unknown)
        .otherwise(known)
    )


def _events(events, rec: int):
    from pyspark.sql import functions as F

    return (
        events.filter(F.col("rec") == rec)
        .withColumn("unknown_row", F.col("row") + F.lit(UNKNOWN_ROW_OFFSET))
        .withColumn("ts", F.timestamp_micros("ts_us"))
        .withColumn("ds", F.date_format("ts", "yyyy-MM-dd"))
    )


def _lookup(values: tuple[str, ...], code_col: str):
    from pyspark.sql import functions as F

    return F.element_at(F.array(*[F.lit(v) for v in values]), F.col(code_col) + 1)


def impressions_from(events):
    from pyspark.sql import functions as F

    df = _events(events, REC_IMPRESSION)
    prefixed = {
        "user_segment": ("seg", "segment"),
        "user_city": ("city", "city"),
        "item_id": ("it", "item"),
        "category_id": ("c", "category"),
        "shop_id": ("s", "shop"),
        "brand_id": ("b", "brand"),
    }
    return df.select(
        F.concat(F.lit("i"), _key("row")).alias("impression_id"),
        "ts",
        F.when(F.col("key_state") == KEY_OK, F.concat(F.lit("u"), F.col("user").cast("string"))).alias("user_id"),
        *[F.concat(F.lit(prefix), F.col(c).cast("string")).alias(name) for name, (prefix, c) in prefixed.items()],
        "price",
        "position",
        _lookup(DEVICES, "device").alias("device"),
        "ds",
    )


def truth_from(events):
    from pyspark.sql import functions as F

    df = _events(events, REC_IMPRESSION).filter(~F.col("duplicate"))
    probabilities = ["p_click", "p_micro", "p_macro", "p_cvr", "p_ctcvr"]
    return df.select(F.concat(F.lit("i"), _key("row")).alias("impression_id"), *probabilities, "ds")


def clicks_from(events):
    from pyspark.sql import functions as F

    df = _events(events, REC_CLICK)
    return df.select(
        F.concat(F.lit("c"), _key("seq")).alias("click_id"), _impression_id().alias("impression_id"), "ts", "ds"
    )


def behaviours_from(events):
    from pyspark.sql import functions as F

    df = _events(events, REC_BEHAVIOUR)
    kind = F.when(F.col("action") >= MACRO_ACTIONS[0], F.lit("macro")).otherwise(F.lit("micro"))
    return df.select(
        F.concat(F.lit("b"), _key("seq")).alias("behaviour_id"),
        _impression_id().alias("impression_id"),
        "ts",
        kind.alias("kind"),
        _lookup(ACTIONS, "action").alias("action"),
        "ds",
    )


def conversions_from(events):
    from pyspark.sql import functions as F

    df = _events(events, REC_CONVERSION)
    return df.select(
        F.concat(F.lit("p"), _key("seq")).alias("conversion_id"),
        _impression_id().alias("impression_id"),
        "ts",
        "amount",
        "ds",
    )


TABLE_BUILDERS = {
    "impressions": impressions_from,
    "clicks": clicks_from,
    "behaviours": behaviours_from,
    "conversions": conversions_from,
    "truth": truth_from,
}


def expected_rates(params: SimParams) -> dict:
    """The rates the calibrated intercepts aim at (observed rates differ by sampling noise)."""
    return {
        "ctr": params.target_ctr,
        "purchases_per_click": params.target_cvr,
        "micro_per_click": params.target_micro_rate,
        "macro_per_click": params.target_macro_rate,
    }
