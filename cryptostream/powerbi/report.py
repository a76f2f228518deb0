"""The report in the PBIR format: one page laid out like the built-in dashboard.

A line chart of each asset's price variation over time, a Year / Month / Day
slicer, an Asset slicer, a table of the last price per asset and six cards, on
a 1280 x 720 (16:9) page. Every file names the JSON schema it follows; the versions are
those Power BI Desktop wrote in May 2025 (see docs/powerbi.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptostream.powerbi.model import HIERARCHY, TICKS

SCHEMA_ROOT = "https://developer.microsoft.com/json-schemas/fabric/"
SCHEMAS = {
    "pbip": "pbip/pbipProperties/1.0.0",
    "platform": "gitIntegration/platformProperties/2.0.0",
    "pbir": "item/report/definitionProperties/2.0.0",
    "pbism": "item/semanticModel/definitionProperties/1.0.0",
    "version": "item/report/definition/versionMetadata/1.0.0",
    "report": "item/report/definition/report/1.3.0",
    "pages": "item/report/definition/pagesMetadata/1.0.0",
    "page": "item/report/definition/page/1.4.0",
    "visual": "item/report/definition/visualContainer/2.0.0",
}


def schema(kind: str) -> str:
    return f"{SCHEMA_ROOT}{SCHEMAS[kind]}/schema.json"


PAGE = "prices"
PAGE_WIDTH, PAGE_HEIGHT = 1280, 720
BASE_THEME = "CY24SU10"
CUSTOM_THEME = "cryptostream.json"
# The version of the report format Desktop records when a theme is added.
THEME_REPORT_VERSION = "5.61"
# The dashboard's palette (cryptostream/web_static), so both views look alike.
COLORS = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16"]

Json = dict[str, Any]


def literal(value: str) -> Json:
    """A PBIR literal expression: text in single quotes, ``true``, ``12D`` (a double)..."""
    return {"expr": {"Literal": {"Value": value}}}


def text(value: str) -> Json:
    return literal("'" + value.replace("'", "''") + "'")


@dataclass(frozen=True, slots=True)
class Field:
    """A model field a visual shows: a column, a measure or a hierarchy level."""

    table: str
    prop: str
    kind: str = "Column"  # Column | Measure | Level
    hierarchy: str = ""

    def expression(self) -> Json:
        source = {"SourceRef": {"Entity": self.table}}
        if self.kind == "Level":
            return {
                "HierarchyLevel": {
                    "Expression": {
                        "Hierarchy": {"Expression": source, "Hierarchy": self.hierarchy}
                    },
                    "Level": self.prop,
                }
            }
        return {self.kind: {"Expression": source, "Property": self.prop}}

    def projection(self, active: bool = False) -> Json:
        parts = (
            [self.table, self.hierarchy, self.prop] if self.hierarchy else [self.table, self.prop]
        )
        out: Json = {
            "field": self.expression(),
            "queryRef": ".".join(parts),
            "nativeQueryRef": f"{self.hierarchy} {self.prop}" if self.hierarchy else self.prop,
        }
        if active:
            out["active"] = True
        return out


def measure(prop: str) -> Field:
    return Field(TICKS, prop, "Measure")


def level(prop: str) -> Field:
    return Field(TICKS, prop, "Level", HIERARCHY)


@dataclass(frozen=True, slots=True)
class Visual:
    name: str
    visual_type: str
    title: str
    #: x, y, width, height on the page.
    box: tuple[int, int, int, int]
    roles: dict[str, tuple[Field, ...]]
    objects: Json | None = None
    sort: Field | None = None
    #: Roles whose fields group the visual (a slicer's values, a chart's X axis): Power BI
    #: Desktop saves their projections with ``"active": true``.
    grouping: tuple[str, ...] = ()


def visuals() -> tuple[Visual, ...]:
    """The page: a row of cards, then the slicers, the chart and the last-values table.

    The Asset and Last price cards answer for one asset (picked in the Asset slicer
    or the chart's legend) and say "Select one asset" otherwise; the other cards
    count or date whatever the filter holds.
    """
    margin, gap = 16, 12
    cards = (
        ("card_asset", "Asset", "Asset"),
        ("card_last_price", "Last price (USD)", "Last Price Card"),
        ("card_last_time", "Last time (UTC)", "Last Time"),
        ("card_records", "Records", "Records"),
        ("card_assets", "Assets tracked", "Assets"),
        ("card_days", "Days tracked", "Days Tracked"),
    )
    card_w = (PAGE_WIDTH - 2 * margin - (len(cards) - 1) * gap) // len(cards)
    card_h = 110
    out = [
        Visual(
            vname,
            "card",
            title,
            (margin + i * (card_w + gap), margin, card_w, card_h),
            {"Values": (measure(prop),)},
        )
        for i, (vname, title, prop) in enumerate(cards)
    ]
    top = margin + card_h + gap
    height = PAGE_HEIGHT - top - margin
    slicer_w, table_w = 220, 364
    date_h = (height - gap) // 2
    chart_w = PAGE_WIDTH - 2 * margin - slicer_w - table_w - 2 * gap
    out += [
        Visual(
            "slicer_date",
            "slicer",
            "Date (UTC)",
            (margin, top, slicer_w, date_h),
            {"Values": (level("Year"), level("Month"), level("Day"))},
            objects={"data": [{"properties": {"mode": text("Basic")}}]},
            grouping=("Values",),
        ),
        Visual(
            "slicer_asset",
            "slicer",
            "Asset",
            (margin, top + date_h + gap, slicer_w, height - date_h - gap),
            {"Values": (Field(TICKS, "name"),)},
            objects={"data": [{"properties": {"mode": text("Basic")}}]},
            grouping=("Values",),
        ),
        Visual(
            "chart_variation",
            "lineChart",
            "Price variation since 00:00 UTC",
            (margin + slicer_w + gap, top, chart_w, height),
            {
                "Category": (Field(TICKS, "TimeUTC"),),
                "Y": (measure("Price Variation %"),),
                "Series": (Field(TICKS, "symbol"),),
            },
            grouping=("Category",),
        ),
        Visual(
            "table_last_values",
            "tableEx",
            "Last price per asset",
            (PAGE_WIDTH - margin - table_w, top, table_w, height),
            {
                "Values": tuple(
                    Field("crypto_last_values", c)
                    for c in ("symbol", "name", "priceUsd", "changePercent24Hr", "TimeUTC")
                )
            },
            sort=Field("crypto_last_values", "symbol"),
        ),
    ]
    return tuple(out)


def visual_json(v: Visual, z: int) -> Json:
    query: Json = {
        "queryState": {
            role: {"projections": [f.projection(role in v.grouping) for f in fields]}
            for role, fields in v.roles.items()
        }
    }
    if v.sort is not None:
        query["sortDefinition"] = {
            "sort": [{"field": v.sort.expression(), "direction": "Ascending"}],
            "isDefaultSort": True,
        }
    body: Json = {"visualType": v.visual_type, "query": query}
    if v.objects:
        body["objects"] = v.objects
    body["visualContainerObjects"] = {
        "title": [{"properties": {"show": literal("true"), "text": text(v.title)}}]
    }
    body["drillFilterOtherVisuals"] = True
    x, y, width, height = v.box
    return {
        "$schema": schema("visual"),
        "name": v.name,
        "position": {
            "x": x,
            "y": y,
            "z": z * 1000,
            "width": width,
            "height": height,
            "tabOrder": z * 1000,
        },
        "visual": body,
    }


def theme(name: str) -> Json:
    return {
        "name": name,
        "dataColors": COLORS,
        "background": "#FFFFFF",
        "foreground": "#1F2937",
        "tableAccent": COLORS[0],
        "good": "#10b981",
        "bad": "#ef4444",
        "neutral": "#f59e0b",
    }


def _theme_ref(name: str, package: str) -> Json:
    return {"name": name, "reportVersionAtImport": THEME_REPORT_VERSION, "type": package}


def _package(package: str, name: str, path: str, item_type: str) -> Json:
    """A resource package of one item (a theme file under ``StaticResources/<package>/``)."""
    return {
        "name": package,
        "type": package,
        "items": [{"name": name, "path": path, "type": item_type}],
    }


def report_files() -> dict[str, Json]:
    """Paths under the ``.Report`` folder -> JSON documents (``definition.pbir`` aside)."""
    files: dict[str, Json] = {
        "definition/version.json": {"$schema": schema("version"), "version": "2.0.0"},
        "definition/report.json": {
            "$schema": schema("report"),
            "themeCollection": {
                "baseTheme": _theme_ref(BASE_THEME, "SharedResources"),
                "customTheme": _theme_ref(CUSTOM_THEME, "RegisteredResources"),
            },
            "layoutOptimization": "None",
            "resourcePackages": [
                _package(
                    "SharedResources", BASE_THEME, f"BaseThemes/{BASE_THEME}.json", "BaseTheme"
                ),
                _package("RegisteredResources", CUSTOM_THEME, CUSTOM_THEME, "CustomTheme"),
            ],
            "settings": {
                "useStylableVisualContainerHeader": True,
                "defaultDrillFilterOtherVisuals": True,
                "useEnhancedTooltips": True,
            },
        },
        "definition/pages/pages.json": {
            "$schema": schema("pages"),
            "pageOrder": [PAGE],
            "activePageName": PAGE,
        },
        f"definition/pages/{PAGE}/page.json": {
            "$schema": schema("page"),
            "name": PAGE,
            "displayName": "Prices",
            "displayOption": "FitToPage",
            "height": PAGE_HEIGHT,
            "width": PAGE_WIDTH,
        },
        # Desktop resolves a base theme by its name (CY24SU10 is one of its built-in
        # themes): the file only names it; our colours are in the custom theme.
        f"StaticResources/SharedResources/BaseThemes/{BASE_THEME}.json": {"name": BASE_THEME},
        f"StaticResources/RegisteredResources/{CUSTOM_THEME}": theme(CUSTOM_THEME),
    }
    for z, v in enumerate(visuals()):
        files[f"definition/pages/{PAGE}/visuals/{v.name}/visual.json"] = visual_json(v, z)
    return files
