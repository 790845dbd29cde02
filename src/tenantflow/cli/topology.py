"""``tenantflow topology …``: compare placements on one workload, project them, choose one.

* ``compare WORKLOAD``: the same seeded workload through each placement's real processes, one
  placement at a time, measured side by side (docs/placements.md);
* ``project``: the placement models calibrated from a compare's JSON, 10 → 1,000 tenants;
* ``advise``: a recommended placement for a platform's profile, with the seed's reasons and
  the measured figures behind them.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from tenantflow.cli.common import reporting_errors
from tenantflow.errors import ConfigurationError
from tenantflow.tables import output_console

if TYPE_CHECKING:
    from tenantflow.topology.advise import Advice, Profile

__all__ = ["app"]

app = typer.Typer(
    help="Compare placements (embedded, centralized, federated, mesh, hybrid) on one workload,"
    " project them past this machine, and choose one (docs/placements.md).",
    no_args_is_help=True,
)


def _placements(text: str) -> list[str]:
    from tenantflow.topology.placements import PLACEMENTS

    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PLACEMENTS]
    if unknown or not names:
        raise ConfigurationError(
            f"--placements takes a comma-separated list of {', '.join(PLACEMENTS)} (got {text!r})",
            field="placements",
            value=text,
        )
    return list(dict.fromkeys(names))


def _tenant_counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1 or counts[-1] > 1_000_000:
        raise ConfigurationError(
            f"--tenants takes comma-separated tenant counts from 1 to 1000000 (got {text!r})",
            field="tenants",
            value=text,
        )
    return counts


class _Live:
    """Live progress on stderr: one rewritten line on a terminal, a line per phase otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: dict[str, str] = {}
        self.start = time.monotonic()

    def __call__(self, placement: str, text: str) -> None:
        phase = text.split(":", 1)[0]
        elapsed = time.monotonic() - self.start
        line = f"[{elapsed:6.1f}s] {placement}: {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + line[:160])
            if text in ("done", "starting") or "affected" in text or "not available" in text:
                sys.stderr.write("\n")
        elif self.last.get(placement) != phase or "affected" in text or text == "done":
            sys.stderr.write(line + "\n")
        self.last[placement] = phase
        sys.stderr.flush()


@app.command("compare")
def compare(
    workload: Annotated[
        str,
        typer.Argument(
            metavar="WORKLOAD",
            help="A scenario file with a topology: section (scenarios/topology.yaml), or the"
            " name of a shipped one: topology.",
        ),
    ],
    placements: Annotated[
        str,
        typer.Option(
            "--placements",
            help="Comma-separated: embedded, centralized, federated, mesh, hybrid.",
        ),
    ] = "embedded,centralized,federated,mesh,hybrid",
    repeat: Annotated[
        int, typer.Option("--repeat", min=1, max=20, help="Runs per placement (median, min-max).")
    ] = 1,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="The workload's quick: profile (CI: 1-2 minutes a placement)."
        ),
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", metavar="PATH", help="Write the report as JSON.")
    ] = None,
    html_path: Annotated[
        Path | None,
        typer.Option("--html", metavar="PATH", help="Write the report with plots as HTML."),
    ] = None,
    png_path: Annotated[
        Path | None, typer.Option("--png", metavar="PATH", help="Write the plots as PNG.")
    ] = None,
    pg: Annotated[
        str,
        typer.Option(
            "--pg",
            metavar="URL",
            help="The PostgreSQL server of the centralized placement (a private schema is"
            " created on it and dropped after).",
        ),
    ] = "postgresql://postgres@127.0.0.1:5432/test",
) -> None:
    """Drive the same seeded workload through each placement's real processes, one at a time,
    and print the figures side by side."""
    from tenantflow.topology.compare import compare as run_compare
    from tenantflow.topology.placements import runners
    from tenantflow.topology.report import (
        add_projection,
        print_report,
        write_html,
        write_json,
        write_png,
    )
    from tenantflow.topology.workload import load_workload

    signal.signal(signal.SIGTERM, _interrupt)  # stop the placement's processes on the way out
    with reporting_errors():
        names = _placements(placements)
        if html_path is not None or png_path is not None:
            from tenantflow.report import require_plots

            require_plots()
        loaded = load_workload(workload, quick=quick)
        report = run_compare(loaded, names, repeat=repeat, progress=_Live(), runners=runners(pg))
        add_projection(report)
        console = output_console()
        print_report(report, console)
        for out, write in ((json_path, write_json), (html_path, write_html), (png_path, write_png)):
            if out is not None:
                write(report, out)
                console.print(f"wrote {out}", highlight=False)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _load_report(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        from tenantflow.topology.defaults import MEASURED

        return MEASURED, "the shipped figures (" + str(MEASURED.get("measured_on", "")) + ")"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}", field="from") from None
    except ValueError as exc:
        raise ConfigurationError(f"{path} is not JSON: {exc}", field="from") from None
    if not isinstance(data, dict) or "placements" not in data:
        raise ConfigurationError(
            f"{path} is not a `tenantflow topology compare --json` report", field="from"
        )
    return data, str(path)


@app.command("project")
def project(
    from_path: Annotated[
        Path | None,
        typer.Option(
            "--from", metavar="PATH", help="A compare's JSON (default: the shipped figures)."
        ),
    ] = None,
    tenants: Annotated[
        str, typer.Option("--tenants", help="Tenant counts to project to.")
    ] = "10,20,50,100,150,200,500,1000",
    gb_month: Annotated[
        float, typer.Option("--gb-month", min=0.0, max=1e6, help="US$ per GB-month of memory.")
    ] = 4.0,
    vcpu_month: Annotated[
        float, typer.Option("--vcpu-month", min=0.0, max=1e6, help="US$ per vCPU-month.")
    ] = 25.0,
    rate: Annotated[
        float | None,
        typer.Option(
            "--rate",
            min=0.0001,
            max=1e6,
            help="Steps/s per tenant (default: the compared workload's steady rate).",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the projection as JSON.")] = False,
) -> None:
    """Project each measured placement from 10 to 1,000 tenants (a model calibrated from the
    measured figures; its inputs and its error at the measured points are printed)."""
    from tenantflow.sim.placements import Prices
    from tenantflow.topology.report import add_projection, projection_lines

    with reporting_errors():
        report, _source = _load_report(from_path)
        projection = add_projection(
            dict(report),
            tenants=_tenant_counts(tenants),
            prices=Prices(gb_month=gb_month, vcpu_month=vcpu_month),
            rate=rate,
        )
        if json_out:
            typer.echo(json.dumps(projection, indent=1))
            return
        for line in projection_lines(projection):
            typer.echo(line)


_LOAN_PLATFORM = {
    "tenants": 200,
    "growth": 300,
    "regulated": 2,
    "mix": "mixed",
    "sla_tiers": 3,
    "team": 3,
    "noisy": True,
    "side_effects": False,
}
"""Seed 001's loan platform as the seed describes it: 200 financial institutions, three tiers
(enterprise, standard, free), a US-regulated bank and a GDPR-bound EU institution, high- and
low-volume tenants, and a noisy-neighbour incident already seen (Institution X's Monday burst
of 5,000 applications that left 47 institutions in breach of their SLA). Growth (to 300) and
the team (3 engineers) are assumptions the seed does not state."""


@app.command("advise")
def advise(
    tenants: Annotated[int | None, typer.Option("--tenants", min=1, help="Tenants today.")] = None,
    growth: Annotated[
        int | None, typer.Option("--growth", min=1, help="Tenants expected in 12-18 months.")
    ] = None,
    regulated: Annotated[
        int | None,
        typer.Option("--regulated", min=0, help="Tenants with non-negotiable data residency."),
    ] = None,
    mix: Annotated[
        str | None,
        typer.Option(
            "--mix",
            metavar="similar|mixed",
            help="similar workloads and latency needs, or a mixed bag of high- and low-volume.",
        ),
    ] = None,
    sla_tiers: Annotated[
        int | None, typer.Option("--sla-tiers", min=1, help="Distinct SLA tiers sold.")
    ] = None,
    team: Annotated[
        int | None, typer.Option("--team", min=1, help="Engineers who run the platform.")
    ] = None,
    noisy: Annotated[
        bool | None,
        typer.Option("--noisy/--not-noisy", help="Noisy-neighbour incidents already seen."),
    ] = None,
    side_effects: Annotated[
        bool | None,
        typer.Option(
            "--side-effects/--few-side-effects", help="Many side-effect steps (webhooks, …)."
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            metavar="loan-platform",
            help="Answers for seed 001's loan platform (flags given still win).",
        ),
    ] = None,
    from_path: Annotated[
        Path | None,
        typer.Option(
            "--from", metavar="PATH", help="A compare's JSON (default: the shipped figures)."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the advice as JSON.")] = False,
) -> None:
    """Recommend a placement: the seed's reasons, the measured figures behind them, and how to
    graduate later. Missing answers are asked on a terminal."""
    from tenantflow.topology.advise import Profile
    from tenantflow.topology.advise import advise as run_advise

    with reporting_errors():
        if preset not in (None, "loan-platform"):
            raise ConfigurationError(
                "--preset knows one platform: loan-platform", field="preset", value=preset
            )
        base: dict[str, Any] = dict(_LOAN_PLATFORM) if preset else {}
        given = {
            "tenants": tenants,
            "growth": growth,
            "regulated": regulated,
            "mix": mix,
            "sla_tiers": sla_tiers,
            "team": team,
            "noisy": noisy,
            "side_effects": side_effects,
        }
        answers = {**base, **{k: v for k, v in given.items() if v is not None}}
        answers = _ask_missing(answers)
        if answers["mix"] not in ("similar", "mixed"):
            raise ConfigurationError("--mix is similar or mixed", field="mix", value=answers["mix"])
        profile = Profile(
            tenants=int(answers["tenants"]),
            tenants_in_18_months=int(answers["growth"]),
            regulated=int(answers["regulated"]),
            mix=answers["mix"],
            sla_tiers=int(answers["sla_tiers"]),
            team=int(answers["team"]),
            noisy_incidents=bool(answers["noisy"]),
            side_effects=bool(answers["side_effects"]),
        )
        report, source = _load_report(from_path)
        advice = run_advise(profile, report, source)
        if json_out:
            typer.echo(json.dumps(_advice_dict(advice, profile), indent=1))
            return
        _print_advice(advice, profile)


_QUESTIONS: list[tuple[str, str, type]] = [
    ("tenants", "How many tenants today?", int),
    ("growth", "How many in 12-18 months?", int),
    ("regulated", "How many with non-negotiable data residency?", int),
    ("mix", "Workload mix: similar or mixed?", str),
    ("sla_tiers", "How many SLA tiers?", int),
    ("team", "How many engineers run the platform?", int),
    ("noisy", "Noisy-neighbour incidents already? (y/n)", bool),
    ("side_effects", "Many side-effect steps (webhooks, notifications)? (y/n)", bool),
]


def _ask_missing(answers: dict[str, Any]) -> dict[str, Any]:
    missing = [q for q in _QUESTIONS if q[0] not in answers]
    if not missing:
        return answers
    if not sys.stdin.isatty():
        flags = ", ".join("--" + q[0].replace("_", "-") for q in missing)
        raise ConfigurationError(
            f"topology advise needs {flags} (or --preset loan-platform); on a terminal it asks",
            field=missing[0][0],
        )
    for key, question, kind in missing:
        if kind is bool:
            answers[key] = typer.confirm(question, default=False)
        elif kind is int:
            answers[key] = typer.prompt(question, type=int)
        else:
            answers[key] = typer.prompt(question, default="similar")
    return answers


def _advice_dict(advice: Advice, profile: Profile) -> dict[str, Any]:
    return {
        "recommended": advice.placement,
        "profile": profile.__dict__ if hasattr(profile, "__dict__") else _fields(profile),
        "scores": advice.scores,
        "reasons": advice.reasons,
        "measured": advice.figures,
        "graduate": advice.graduate,
        "figures_from": advice.source,
    }


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _print_advice(advice: Advice, profile: Profile) -> None:
    out = output_console()
    best = advice.placement
    out.print(f"recommended placement: {best}", highlight=False)
    out.print("why (seed 000/001):", highlight=False)
    for reason in advice.reasons[best]:
        out.print(f"  + {reason}", highlight=False, markup=False, soft_wrap=True)
    ranked = sorted(advice.scores.items(), key=lambda kv: -kv[1])
    out.print(
        "scores: " + ", ".join(f"{name} {score:+d}" for name, score in ranked), highlight=False
    )
    runner_up = ranked[1][0] if ranked[0][0] == best else ranked[0][0]
    out.print(f"against {runner_up}:", highlight=False)
    for reason in advice.reasons[runner_up]:
        out.print(f"  - {reason}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"measured figures behind it (from {advice.source}):", highlight=False)
    for name in (best, runner_up):
        for line in advice.figures[name]:
            out.print(f"  {name}: {line}", highlight=False, markup=False, soft_wrap=True)
    out.print("how to graduate later:", highlight=False)
    for line in advice.graduate:
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
