"""The ``m3`` command line (README.md, "Command line")."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Annotated, Any

import typer

from m3 import logs
from m3.prefect_api import set_quiet_defaults
from m3.recipe import MCLS_INTERVAL

set_quiet_defaults()  # before anything imports prefect

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="M3-Embedding pipeline: data, training, evaluation."
)
artifacts_app = typer.Typer(no_args_is_help=True, help="List and show artifacts in the store.")
app.add_typer(artifacts_app, name="artifacts")

StoreOpt = Annotated[
    str | None, typer.Option("--store", help="store URL (local folder or s3://bucket/prefix)")
]
ProfileOpt = Annotated[str, typer.Option("--profile", help="profile name (data_specs/profiles) or YAML file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="also third-party DEBUG lines, transformers' load reports and progress bars ($M3_VERBOSE=1)",
    ),
]


class UserError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def _fail(message: str) -> None:
    typer.echo(f"m3: error: {message}", err=True)
    raise typer.Exit(2)


def _store(store: str | None, profile: str | None = None):
    from m3.app.preflight import existing_store  # a read-only command: a missing store is an error

    if store is None and profile is not None:
        # Only here: these pull in Prefect and torch, seconds of start-up for `m3 lineage` & co.
        from m3.app.env import resolve_store_url
        from m3.app.profile import load_profile

        return existing_store(resolve_store_url(load_profile(profile), None))
    return existing_store(store or os.environ.get("M3_STORE") or ".m3/store")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@app.command()
def run(
    profile: ProfileOpt = "demo",
    store: StoreOpt = None,
    from_stage: Annotated[str | None, typer.Option("--from", help="start at this stage")] = None,
    only: Annotated[list[str] | None, typer.Option("--only", help="run only these stages")] = None,
    refresh: Annotated[list[str] | None, typer.Option("--refresh", help="recompute these stages")] = None,
    lock_wait: Annotated[
        float | None,
        typer.Option(
            "--lock-wait",
            min=0,
            help="seconds to wait while another run of the profile holds the store's run lock "
            "(default: $M3_RUN_LOCK_WAIT or 3600; 0: refuse at once)",
        ),
    ] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run the pipeline (or part of it) on a profile; ends with the evaluation table."""
    from m3 import lifecycle

    if verbose:
        logs.setup(verbose=True)  # before the stages import transformers; the run's processes inherit it

    # First: SIGTERM/SIGINT stop every phase in order (imports and config too), and whatever the
    # run leaves in the temp dir goes with it.
    with lifecycle.run_scope():
        _run(profile, store, from_stage, only, refresh, lock_wait, as_json)


def _run(
    profile: str,
    store: str | None,
    from_stage: str | None,
    only: list[str] | None,
    refresh: list[str] | None,
    lock_wait: float | None,
    as_json: bool,
) -> None:
    from flows.pipeline import select_stages
    from m3.app.env import resolve_store_url
    from m3.app.profile import load_profile

    prof = load_profile(profile)  # validate everything before anything is written
    for source in prof.sources:
        prof.source_files(source)
    selected = select_stages(from_stage, only, refresh)
    store_url = resolve_store_url(prof, store)
    from m3.app.preflight import check_planned_names, check_prefect_home, check_writable_store
    from m3.app.reach import check_workers_reach_store, scheduler_addresses

    check_planned_names(prof)  # a name the store would refuse hours in, at round 2's artifacts
    check_writable_store(store_url)  # before Prefect starts: a store it cannot write to is refused
    check_prefect_home()  # and a full or read-only PREFECT_HOME, where its server keeps its database
    for address in scheduler_addresses(prof, selected):
        check_workers_reach_store(store_url, address)  # each worker writes and reads back a marker

    from m3.prefect_api import prefect_api
    from m3.store.backend import Backend
    from m3.store.runlock import hold

    def say(line: str) -> None:
        typer.echo(f"m3: {line}", err=True)

    # The profile's run lock before Prefect starts (a second run waits or is refused in seconds);
    # the pipeline flow takes it again, re-entrantly, and names its flow run in it.
    with hold(Backend(store_url), prof.name, "m3 run (starting)", lock_wait, say), prefect_api():
        from flows.pipeline import pipeline

        state = pipeline(
            profile=profile,
            store=store_url,
            from_stage=from_stage,
            only=only,
            refresh=refresh,
            lock_wait=lock_wait,
            return_state=True,
        )
        if not state.is_completed():
            _fail(f"pipeline run {state.name}: {state.message}")
        result = state.result()
    s = _store(store_url)
    report_id = result["outputs"].get("report")
    if as_json:
        result["report"] = s.manifest(report_id).metrics if report_id else None
        _print_json(result)
        return
    typer.echo("")
    for st in result["stages"]:
        typer.echo(
            f"  {st['stage']:<11} {st['ref']:<24} {st['manifest_id'][:12]}  "
            f"{'cached' if st['cached'] else 'built'}"
        )
    if report_id and any(st["stage"] == "evaluate" for st in result["stages"]):
        typer.echo("\nEvaluation (held-out ICT queries, ×100):\n")
        typer.echo(s.manifest(report_id).metrics.get("table_markdown", ""))
    typer.echo(f"store: {s.url}")


@app.command("eval")
def eval_model(
    model: Annotated[str, typer.Option("--model", help="model ref or id in the store, or a model folder")],
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            help="xquad-r:FILE | tatoeba:DIR:LANG[,LANG] | beir:DIR | miracl:TOPICS:QRELS:CORPUS | "
            "mrtydi:... | mldr:DIR | hf:ID (repeatable; each language is a column)",
        ),
    ],
    modes: Annotated[
        str, typer.Option("--modes", help="comma list")
    ] = "dense,sparse,multivec,dense+sparse,all",
    baseline: Annotated[
        list[str] | None, typer.Option("--baseline", help="a sentence-transformers model folder (repeatable)")
    ] = None,
    multivec: Annotated[
        str, typer.Option("--multivec", help="rerank (dense+sparse candidates) or exhaustive")
    ] = "rerank",
    max_queries: Annotated[int | None, typer.Option("--max-queries", help="first N queries per set")] = None,
    mcls: Annotated[
        bool,
        typer.Option(
            "--mcls", help="encode passages with MCLS: a CLS every --mcls-interval tokens, dense = their mean"
        ),
    ] = False,
    mcls_interval: Annotated[
        int,
        typer.Option("--mcls-interval", min=1, help=f"tokens per CLS with --mcls (paper: {MCLS_INTERVAL})"),
    ] = MCLS_INTERVAL,
    max_length: Annotated[
        int | None, typer.Option("--max-length", min=8, help="passage tokens (default 512; MLDR: 8192)")
    ] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Evaluate a model the way the paper reports it: modes × languages, against BM25."""
    from pathlib import Path

    if verbose:
        logs.setup(verbose=True)

    from tasks.evaluate.config import EvalConfig
    from tasks.evaluate.model_folder import evaluate_model_path

    wanted = tuple(m.strip() for m in modes.split(",") if m.strip())
    primary = "dense" if "dense" in wanted or not wanted else wanted[0]
    lengths = {} if max_length is None else {"max_length": max_length}
    cfg = EvalConfig(
        multivec=multivec,
        modes=wanted,
        primary_mode=primary,
        mcls=mcls,
        mcls_interval=mcls_interval,
        **lengths,
    )
    if Path(model).is_dir():
        path = str(Path(model))
    else:
        s = _store(store)
        path = str(s.materialize(s.resolve(model)))
    result = evaluate_model_path(path, dataset, cfg, baselines=baseline or (), max_queries=max_queries)
    result["model_ref"] = model
    if as_json:
        typer.echo(result["table_markdown"], err=True)  # the table for people, stdout stays JSON
        _print_json(result)
        return
    typer.echo(result["table_markdown"])


@artifacts_app.command("ls")
def artifacts_ls(
    kind: Annotated[str | None, typer.Option("--kind")] = None,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Named artifacts (ref heads)."""
    s = _store(store)
    rows = []
    for entry in sorted(s.refs(), key=lambda e: e.ref):
        if kind and not entry.ref.startswith(f"{kind}/"):
            continue
        rows.append({"ref": entry.ref, "id": entry.manifest, "version": entry.seq, "at": entry.at})
    if as_json:
        _print_json(rows)
        return
    for r in rows:
        typer.echo(f"{r['ref']:<32} v{r['version']:<4} {r['id'][:12]}  {r['at']}")


@artifacts_app.command("show")
def artifacts_show(ref: str, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """One artifact's manifest."""
    s = _store(store)
    m = s.manifest(s.resolve(ref))
    data = m.model_dump(by_alias=True, mode="json")
    if as_json:
        _print_json(data)
        return
    typer.echo(
        f"{m.kind}/{m.name}  {m.id}\ncreated {m.created_at}  "
        f"parents: {', '.join(p[:12] for p in m.parents) or '-'}"
    )
    typer.echo(f"producer: {m.producer.stage} flow run {m.producer.flow_run_id} git {m.producer.git_commit}")
    for f in m.files:
        typer.echo(f"  {f.path:<48} {f.bytes:>12,} B  {'' if f.rows is None else f'{f.rows} rows'}")
    typer.echo(
        json.dumps({k: v for k, v in m.metrics.items() if k != "table_markdown"}, indent=2, default=str)
    )


@app.command()
def lineage(ref: str, store: StoreOpt = None, as_json: JsonOpt = False) -> None:
    """The chain of artifacts ``REF`` was derived from, down to the raw source files."""
    from m3.store.lineage import lineage as walk

    nodes = walk(_store(store), ref)
    if as_json:
        _print_json(nodes)
        return
    depth = {nodes[0]["id"]: 0}
    for n in nodes:
        for p in n["parents"]:
            depth.setdefault(p, depth[n["id"]] + 1)
        pr = n["producer"]
        typer.echo(
            f"{'  ' * depth[n['id']]}{n['kind']}/{n['name']} {n['id'][:12]}"
            f"  [{pr['stage'] or '-'} run {pr['flow_run_id'] or '-'} git {(pr['git_commit'] or '-')[:10]}"
            f" config {pr['config_hash'][:10] or '-'}]"
        )
        if n["kind"] == "source":
            for f in n["files"]:
                typer.echo(
                    f"{'  ' * (depth[n['id']] + 1)}{f['path']} sha256:{f['sha256'][:16]} {f['bytes']:,} B"
                )


@app.command()
def export(
    ref: str,
    dest: Annotated[str, typer.Argument(metavar="DIR", help="a new or empty folder")],
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A model as a plain folder (HF, sentence-transformers, FlagEmbedding) whose model card has the
    evaluation table of the newest report on it."""
    import dataclasses
    from pathlib import Path

    from m3.app.export import export_model

    out = export_model(_store(store), ref, Path(dest))
    if as_json:
        _print_json(dataclasses.asdict(out))
        return
    evaluation = f"evaluation from report {out.report[:12]}" if out.report else "no report on it yet"
    typer.echo(f"{out.ref} {out.model[:12]} -> {out.folder} ({out.files} files; {evaluation})")


@app.command()
def retry(
    flow_run_id: str,
    local: Annotated[
        bool, typer.Option("--local", help="re-run the parameters here, not through the deployment's worker")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the retried run to finish")] = True,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Retry a failed flow run; stages that finished before the failure come back from the store."""
    if verbose:
        logs.setup(verbose=True)
    from m3.app.preflight import check_prefect_home
    from m3.app.retry import retry as do_retry
    from m3.prefect_api import prefect_api

    check_prefect_home()
    with prefect_api():
        out = do_retry(flow_run_id, local=local, wait=wait)
    if as_json:
        _print_json({k: v for k, v in out.items() if k != "result"})
    else:
        typer.echo(
            f"{out['mode']} retry of {out.get('retry_of', out['flow_run_id'])} ({out['name']}): "
            f"{out.get('state', '?')}"
        )
        for st in (out.get("result") or {}).get("stages", []):
            typer.echo(
                f"  {st['stage']:<11} {st['ref']:<24} {st['manifest_id'][:12]}  "
                f"{'cached' if st['cached'] else 'built'}"
            )
    if out.get("state") not in {"COMPLETED", "SCHEDULED"}:
        _fail(f"retried run {out['flow_run_id']} ended {out.get('state')}: {out.get('message')}")


@app.command()
def ui(
    port: Annotated[int, typer.Option("--port", help="port to listen on (0: any free port)")] = 8765,
    host: Annotated[str, typer.Option("--host", help="interface to bind")] = "127.0.0.1",
    store: StoreOpt = None,
) -> None:
    """The lineage web page: artifact graph, manifests, metrics, plots, links to Prefect runs."""
    from m3.app.preflight import checked_now
    from m3.app.ui.server import serve

    serve(checked_now(_store(store)), host=host, port=port)


@app.command()
def gc(
    store: StoreOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="only list what would be deleted")] = False,
    grace: Annotated[
        float, typer.Option("--grace", help="keep anything younger than this (seconds)")
    ] = 3600.0,
    as_json: JsonOpt = False,
) -> None:
    """Delete what no ref reaches (crashed commits, superseded cache entries)."""
    removed = _store(store).gc(dry_run=dry_run, grace_seconds=grace)
    if as_json:
        _print_json(removed)
        return
    verb = "would delete" if dry_run else "deleted"
    typer.echo(", ".join(f"{verb} {len(v)} {k}" for k, v in removed.items()))


@app.command()
def verify(
    refs: Annotated[
        list[str] | None, typer.Argument(metavar="[REF]...", help="only these (default: all)")
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="drop damaged versions from their refs so a rerun rebuilds them")
    ] = False,
    store: StoreOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check the store: ref files, manifest ids, blob sizes and hashes, parents; exit 1 on damage."""
    import dataclasses

    from m3.store.verify import verify as check

    report = check(_store(store), refs or None, repair=repair)
    if as_json:
        _print_json({**dataclasses.asdict(report), "ok": report.ok})
    else:
        from m3.store.verify import describe

        typer.echo(describe(report))
    if not report.ok:
        raise typer.Exit(1)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions printed as a one-line error (exit status 2)."""
    from pydantic import ValidationError

    from m3.store import InvalidName, NotFound, StoreError
    from m3.store.backend import StoreUnavailable

    errors: tuple[type[BaseException], ...] = (InvalidName, NotFound, StoreError, StoreUnavailable)
    errors += (ValueError, ValidationError)
    errors += (FileNotFoundError, PermissionError, UserError)
    # m3.app.profile imports torch (seconds): commands that never load a profile should not pay for it,
    # and if it was never imported no ProfileError can have been raised.
    profile = sys.modules.get("m3.app.profile")
    return (*errors, profile.ProfileError) if profile is not None else errors


def main() -> None:
    from m3 import lifecycle

    try:
        _main()
    finally:
        signum = lifecycle.stop_signal()
        if signum is not None:  # however the stop surfaced (Abort, Exit(130), a crashed state)
            typer.echo(f"m3: stopped by {signal.Signals(signum).name}", err=True)
            # The run is over and its children are gone: Prefect's exit-time workers would only
            # retry (for seconds) the server already stopped.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)


def _main() -> None:
    logs.setup()  # quiet third-party output; a command's --verbose turns it back on
    try:
        # Without standalone mode click *returns* the code of a ``typer.Exit`` (``_fail``) instead of
        # exiting with it.
        code = app(standalone_mode=False)
    except _user_errors() as exc:  # evaluated when an exception is raised
        typer.echo(f"m3: error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt) as exc:
        from m3 import lifecycle

        cause = exc.__cause__ if isinstance(exc, typer.Abort) else None
        if isinstance(cause, EOFError) and lifecycle.stop_signal() is None:
            # click turns every EOFError into Abort (Ctrl-D at a prompt; m3 has none): here it is
            # input that ends early, e.g. a cut file. Only a real interrupt is "aborted".
            typer.echo(f"m3: error: input ends early: {cause or type(cause).__name__}", err=True)
            sys.exit(2)
        if lifecycle.stop_signal() is None:
            typer.echo("m3: aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors come through here too
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
