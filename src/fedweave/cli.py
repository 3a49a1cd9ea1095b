"""The ``fedweave`` command line.

Errors a user can fix (bad config, unknown names, missing data) print one paragraph and
exit with code 2, without a traceback.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .core.errors import FedweaveError

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Federated learning where aggregation comes first.")
console = Console(stderr=True)
out = Console()

SET_HELP = "override a config key: --set client.lr=0.1 (dotted key, YAML value); repeatable"
IMPORT_HELP = ("import your module first (its methods, stages, models, tasks, data sources register themselves); "
               "the current folder is importable; repeatable")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"fedweave {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
):
    """Federated learning where aggregation comes first."""


def _import(modules: Optional[List[str]]) -> None:
    """Import the user's ``--import`` modules (a failure is a FedweaveError for _fail)."""
    if modules:
        from .plugins import import_plugins

        import_plugins(modules)


def _fail(exc: Exception) -> None:
    # escaped: messages quote things like "fedweave[ray]" that rich would read as markup
    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML config (default: the built-in quickstart)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run directory"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the stopped run in this directory"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run already in --out (nothing else is deleted)"),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Run an experiment (or continue a stopped one) and write its run directory."""
    from . import experiment
    from .config import load_config, read_yaml

    if resume is not None and (config is not None or set_ or out_dir is not None or overwrite):
        _fail(FedweaveError("--resume DIR takes its config from DIR; do not combine it with CONFIG, --set, --out "
                            "or --overwrite."))
    try:
        _import(imports)
        cfg = load_config(read_yaml(resume / "config.yaml")) if resume is not None and (resume / "config.yaml").is_file() \
            else load_config(config, set_)
    except FedweaveError as exc:
        _fail(exc)
    unit, label = _progress_unit(cfg)
    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), console=console, disable=quiet, transient=False,
    )
    task_id = progress.add_task("run", total=None, status="", shown="")
    metric, _ = _headline_name(cfg)
    run_path: list[Path] = []  # known once the run directory exists

    def on_round(done: int, total: int, record: dict | None) -> None:
        if not progress.live.is_started:  # start only once the run is built and valid
            progress.start()
        status = ""
        if record is not None and record.get(metric) is not None:
            status = f"{metric} {record[metric]:.4f}"
        if unit == "time" and record is not None:  # a budget in virtual seconds
            done, total = int(record.get("virtual_time_s") or 0), int(cfg.schedule.max_time_s)
        shown = f"{done}/{total}" if total else str(done)
        progress.update(task_id, completed=done, total=total or None, shown=shown,
                        **({"status": status} if status else {}))

    def remember(path: Path) -> None:
        run_path.append(path)

    main = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread
    previous = signal.signal(signal.SIGTERM, _terminate_like_ctrl_c) if main else None
    try:
        if resume is not None:
            result = experiment.resume(resume, progress=on_round)
        else:
            result = experiment.run(config, out=out_dir, overrides=set_, progress=on_round, overwrite=overwrite,
                                    plugins=imports, on_start=remember)
    except FedweaveError as exc:
        progress.stop()
        _fail(exc)
    except KeyboardInterrupt as exc:
        progress.stop()
        how = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        where = resume if resume is not None else (run_path[0] if run_path else None)
        if where is None:  # stopped while the run was being built: nothing was written
            console.print(f"[yellow]{how}[/] before the run started; nothing was written.", highlight=False)
        else:
            console.print(f"[yellow]{how}[/]: checkpoint written; continue with `fedweave run --resume {where}`.",
                          highlight=False)
        raise typer.Exit(code=EXIT_SIGTERM if isinstance(exc, _Terminated) else EXIT_INTERRUPTED)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    progress.stop()
    _print_result(result)


EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, the shell's convention
EXIT_SIGTERM = 143  # 128 + SIGTERM


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, systemd): stop as Ctrl-C does, checkpoint included."""


def _terminate_like_ctrl_c(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the checkpoint short
    raise _Terminated()


def _progress_unit(cfg) -> tuple[str, str]:
    """What the progress bar counts: rounds (sync), arrivals, or virtual seconds (a time budget)."""
    s = cfg.schedule
    if s.mode == "sync":
        return "rounds", "round {task.fields[shown]}"
    if s.max_time_s is not None and s.max_arrivals is None:
        return "time", "virtual s {task.fields[shown]}"
    return "arrivals", "arrivals {task.fields[shown]}"


def _headline_name(cfg) -> tuple[str, bool]:
    from .experiment import headline_metric
    from .tasks import make_task

    try:
        return headline_metric(cfg, make_task(cfg.task.kind))
    except FedweaveError:
        return "accuracy", True


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def human_bytes(n: float) -> str:
    """``2208800`` → ``2.21 MB`` (powers of 1000, as the report's MB)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} TB"


#: figures of an active feature (attack, privacy, eavesdropper, robustness) shown beside the headline
FEATURE_FIGURES = ("final_attack_success_rate", "epsilon", "final_robust_accuracy")


def _print_result(result) -> None:
    """The run's summary table; a diverged run also says why and exits with code 1."""
    _print_summary(result.summary, result.run_dir)
    if result.summary.get("warning"):
        console.print(f"[bold yellow]warning:[/] {escape(str(result.summary['warning']))}")
    if result.status == "diverged":
        console.print(f"[bold red]diverged:[/] {escape(str(result.summary.get('message')))}")
        raise typer.Exit(code=1)


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The final table's (figure, value) rows: the headline figure first, then the global
    model's where the headline is another, the active features' figures, time and traffic.
    Figures that do not apply (no target, no per-client evaluation) are left out."""
    metric = summary.get("metric_name", "metric")
    keys = ["rounds_completed", "final_metric", "best_metric",
            *[k for k in summary if k.startswith("final_global_")],
            *FEATURE_FIGURES, *[k for k in summary if k.startswith("final_eavesdropper_")],
            "final_loss", "time_to_target_s", "virtual_time_s", "wall_time_s", "bytes_up", "bytes_down",
            "client_updates", "dropped_updates", "client_acc_mean", "client_acc_worst10", "jain_index", "executor", "device"]
    rows = []
    for key in dict.fromkeys(keys):
        value = summary.get(key)
        if value is None:
            continue
        label = key.replace("_metric", f"_{metric}") if key.endswith("_metric") else key
        if key == "rounds_completed" and summary.get("rounds") and summary.get("rounds") != value:
            text = f"{value} of {summary['rounds']}"
        elif key.startswith("bytes_"):
            text = human_bytes(value)
        elif key.endswith("_s") and isinstance(value, (int, float)):
            text = f"{value:.4g} s"
        else:
            text = _fmt(value)
        rows.append((label, text))
    return rows


def _print_summary(summary: dict, run_dir: Path) -> None:
    degenerate = " (degenerate)" if str(summary.get("warning", "")).startswith("degenerate") else ""
    table = Table(title=f"{summary['name']} · {summary['method']} · {summary['status']}{degenerate}", show_header=True)
    table.add_column("figure", overflow="fold")
    table.add_column("value", justify="right", overflow="fold")
    for label, text in summary_rows(summary):
        table.add_row(label, text)
    if summary.get("warning"):
        table.add_row("[yellow]warning[/]", "[yellow]" + escape(str(summary["warning"]).split(":", 1)[0]) + "[/]")
    out.print(table)
    out.print(f"run directory: {run_dir}")


@app.command()
def methods():
    """List the registered methods."""
    from .methods import registered

    table = Table(show_header=True)
    for col in ("method", "what it does", "paper"):
        table.add_column(col)
    for name, info in sorted(registered().items()):
        table.add_row(name, info.summary, info.citation)
    out.print(table)


@app.command()
def datasets():
    """List the data sources."""
    from . import tasks  # noqa: F401  (task bundles register theirs: pydocs, sr<k>:<source>, clips...)
    from .data import DATASETS

    for name, desc in DATASETS.items():
        out.print(f"[bold]{name:14}[/] {desc}", highlight=False)


@app.command()
def models(imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP)):
    """List every model: built in, registered by tasks and methods (and your --import modules)."""
    from . import tasks  # noqa: F401  (task bundles register their models: srnet, transformer...)
    from .methods import registered
    from .models import EXTRA_MODELS, MODELS

    try:
        _import(imports)
    except FedweaveError as exc:
        _fail(exc)
    registered()  # method modules register theirs (FedIns's ssf_pool)
    rows = [*MODELS.items(), *((name, desc) for name, (_, desc) in EXTRA_MODELS.items())]
    for name, desc in rows:
        out.print(f"[bold]{name:12}[/] {escape(desc)}", highlight=False)
    out.print(f"[bold]{'module:factory':12}[/] your own: a function factory(input_shape, num_classes, width=..., "
              "**model.kwargs) in an importable module (the current folder is importable)", highlight=False)


@app.command()
def partition(
    config: Optional[Path] = typer.Argument(None, help="YAML config (default: the quickstart)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    show: int = typer.Option(20, "--show", help="clients listed individually"),
    plot: Optional[Path] = typer.Option(
        None, "--plot", help="also draw each client's label distribution (stacked bars) and size into this file (.png)"
    ),
):
    """Print partition statistics: sizes, label histograms and a heterogeneity figure."""
    from .config import load_config
    from .data.federated import build_federated
    from .data.stats import heterogeneity, label_histograms

    try:
        if plot is not None:
            from .data.plots import check_plot_path

            check_plot_path(plot)
        cfg = load_config(config, set_)
        data = build_federated(cfg.data)
    except FedweaveError as exc:
        _fail(exc)
    labels = data.labels.numpy()
    parts = [t.numpy() for t in data.client_train]
    hists = label_histograms(labels, parts, data.num_classes)
    sizes = hists.sum(axis=1)
    out.print(
        f"[bold]{data.name}[/]: {data.num_clients} clients · {int(sizes.sum())} training examples · "
        f"{len(data.y_test)} test · {len(data.server_idx)} server-held · "
        f"{sum(len(v) for v in data.client_val)} client validation", highlight=False,
    )
    out.print(f"sizes: min {sizes.min()}, mean {sizes.mean():.1f}, max {sizes.max()}, std {sizes.std():.1f}")
    out.print(f"heterogeneity (mean total-variation distance to the global label distribution): {heterogeneity(hists):.3f}")
    table = Table(show_header=True)
    table.add_column("client", justify="right")
    table.add_column("size", justify="right")
    for c in range(data.num_classes):
        table.add_column(str(c), justify="right")
    for k in range(min(show, data.num_clients)):
        table.add_row(str(k), str(sizes[k]), *[str(v) for v in hists[k]])
    out.print(table)
    if data.num_clients > show:
        out.print(f"({data.num_clients - show} more clients; --show N lists more)")
    if plot is not None:
        from .data.plots import plot_partition

        try:
            written = plot_partition(hists, plot, title=f"{data.name}: label distribution of {data.num_clients} clients")
        except FedweaveError as exc:
            _fail(exc)
        out.print(f"plot written to {written}", highlight=False)


GRID_HELP = ("KEY=V1,V2,...: a config key and the values to try, parsed as YAML; commas inside [...] or quotes "
             "do not split, and a list containing ';' is split on ';' only; repeatable (cross product)")


@app.command()
def sweep(
    config: Optional[Path] = typer.Argument(None, help="base YAML config (default: the built-in quickstart)"),
    grid: Optional[List[str]] = typer.Option(None, "--grid", help=GRID_HELP),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the config's seed)"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="parallel worker processes (default: the number of CPUs)"),
    out_dir: Path = typer.Option(..., "--out", help="sweep directory; running again skips finished runs"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP + " (the workers import it too)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
):
    """Run every combination of --grid values x --seeds as separate runs, in parallel processes."""
    from .sweep import TABLE_FILE, run_sweep

    progress = Progress(
        TextColumn("[bold]runs {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[failed]}"),
        TimeElapsedColumn(), TextColumn("{task.fields[last]}"), console=console, disable=quiet, transient=False,
    )
    task_id = progress.add_task("sweep", total=None, failed="", last="")

    def on_progress(state) -> None:
        if not progress.live.is_started:  # start only once every combination is validated
            progress.start()
        failed = f"[red]{state.failed} failed[/]" if state.failed else "0 failed"
        skipped = f"{state.skipped} already finished · " if state.skipped else ""
        progress.update(task_id, completed=state.done, total=state.total, failed=skipped + failed,
                        last=state.last or "")

    try:
        result = run_sweep(config, grid=grid, seeds=seeds, out=out_dir, overrides=set_, jobs=jobs, progress=on_progress,
                           plugins=imports)
    except FedweaveError as exc:
        progress.stop()
        _fail(exc)
    except KeyboardInterrupt:
        progress.stop()
        console.print("[yellow]interrupted[/]: run the same command again to finish the sweep (finished runs are kept).")
        raise typer.Exit(code=130)
    progress.stop()
    out.print((result.out / TABLE_FILE).read_text(), markup=False, highlight=False, soft_wrap=True)
    out.print(f"sweep directory: {result.out} (results.csv, table.md; `fedweave report {result.out}` for plots)")
    if result.failed:
        console.print(f"[bold red]{len(result.failed)} run(s) failed[/]; see error.txt in: "
                      + ", ".join(result.failed[:5]) + (" ..." if len(result.failed) > 5 else ""))
        raise typer.Exit(code=1)


@app.command()
def report(
    dirs: List[Path] = typer.Argument(..., help="run directories, sweep directories or folders holding them"),
    out_file: Optional[Path] = typer.Option(None, "--out", help="HTML file (default: DIR/report.html for one DIR, "
                                            "else ./report.html); PNG plots are written next to it"),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
):
    """Write an HTML report (table and plots) of finished runs and sweeps."""
    from .report import write_report

    try:
        _import(imports)
        result = write_report(dirs, out_file)
    except FedweaveError as exc:
        _fail(exc)
    out.print(f"report: {result.html} ({len(result.runset.runs)} runs, {len(result.images)} plots)")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


# -- deployment (fedweave.deploy): serve, join, tokens -----------------------------------------


def _deploy_logging(quiet: bool) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def serve(
    config: Optional[Path] = typer.Argument(None, help="YAML config (default: the built-in quickstart)"),
    address: str = typer.Option("127.0.0.1:50051", "--address", help="HOST:PORT to listen on"),
    tokens: Optional[Path] = typer.Option(None, "--tokens", help="token file of `fedweave tokens new` (default: make "
                                          "one per client, print them once, keep the hashes in the state dir)"),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (with --tls-key): serve over TLS"),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="where checkpoints go (default: the run directory)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="run directory"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run already in --out (nothing else is deleted)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    min_clients: Optional[int] = typer.Option(None, "--min-clients", help="connected clients needed before a round "
                                              "starts (default: schedule.clients_per_round)"),
    join_timeout: Optional[float] = typer.Option(None, "--join-timeout", help="give up when too few clients are "
                                                 "connected for this many seconds (default: wait)"),
    frame_bytes: int = typer.Option(1 << 20, "--frame-bytes", help="tensor bytes per gRPC message (models stream in frames)"),
    quorum: Optional[int] = typer.Option(None, "--quorum", help="after the first round, go on with this many connected "
                                         "clients (default 1) once the missing ones had schedule.deadline_s to come back; "
                                         "with fewer, stop (status stalled, resumable)"),
    stream_idle_s: float = typer.Option(30.0, "--stream-idle-s", help="end an upload stream that sends no frame for "
                                        "this many seconds"),
    job_timeout: Optional[float] = typer.Option(None, "--job-timeout", help="async/buffered modes: free the slot of a "
                                                "job whose upload has not begun after this many seconds (default: wait)"),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings only"),
):
    """Run the configured method's server over gRPC until its rounds are done (writes a run directory)."""
    _deploy_logging(quiet)
    try:
        _import(imports)
        from .deploy import require_grpc

        require_grpc()
        from .deploy.server import serve as deploy_serve

        result = deploy_serve(config, address=address, overrides=set_, out=out_dir, tokens=tokens, tls_cert=tls_cert,
                              tls_key=tls_key, state_dir=state_dir, resume=resume, min_clients=min_clients,
                              join_timeout_s=join_timeout, frame_bytes=frame_bytes, print_tokens=typer.echo,
                              quorum=quorum, stream_idle_s=stream_idle_s, overwrite=overwrite,
                              job_timeout_s=job_timeout)
    except FedweaveError as exc:
        _fail(exc)
    _print_result(result)
    if result.status == "interrupted":
        console.print(f"[yellow]interrupted[/]: continue with `fedweave serve --resume --out {result.run_dir}`")
    if result.status == "stalled":
        console.print(f"[bold red]stalled:[/] {escape(str(result.summary.get('message')))}")
        raise typer.Exit(code=1)


@app.command()
def join(
    server: str = typer.Option(..., "--server", help="HOST:PORT of the server"),
    token: str = typer.Option(..., "--token", envvar="FEDWEAVE_TOKEN", help="this client's token (or $FEDWEAVE_TOKEN)"),
    root_ca: Optional[Path] = typer.Option(None, "--root-ca", help="PEM certificate(s) to trust: connect over TLS"),
    tls: bool = typer.Option(False, "--tls", help="connect over TLS trusting the system's roots"),
    data: Optional[Path] = typer.Option(None, "--data", help="this client's own data: an .npz file with x and y"),
    partition: Optional[int] = typer.Option(None, "--partition", help="demo data: partition N of --config's dataset"),
    config: Optional[Path] = typer.Option(None, "--config", help="config whose dataset --partition splits"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
    give_up_s: float = typer.Option(600.0, "--give-up-s", help="stop after the server is unreachable this long"),
    crash_at_round: Optional[int] = typer.Option(None, "--crash-at-round", hidden=True),
    imports: Optional[List[str]] = typer.Option(None, "--import", help=IMPORT_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings only"),
):
    """Run one client: join the server with a token and train its tasks on local data until the run is done."""
    _deploy_logging(quiet)
    try:
        _import(imports)
        from .deploy import require_grpc

        require_grpc()
        from .deploy.client import join as deploy_join

        done = deploy_join(server, token, root_ca=root_ca, tls=tls, data=data, partition=partition, config=config,
                           overrides=set_, give_up_s=give_up_s, crash_at_round=crash_at_round)
    except FedweaveError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(code=130)
    out.print(f"run complete: {done} tasks trained")


tokens_app = typer.Typer(add_completion=False, help="Client tokens for `fedweave serve` / `fedweave join`.")
app.add_typer(tokens_app, name="tokens")


@tokens_app.command("new")
def tokens_new(
    clients: int = typer.Option(..., "--clients", help="number of clients (ids FIRST..FIRST+N-1)"),
    out_file: Path = typer.Option(..., "--out", help="token file for the server (hashes only)"),
    first_id: int = typer.Option(0, "--first-id", help="client id of the first token"),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="bound on the examples a client may "
                                               "claim (default: its partition's size in the server's config)"),
    force: bool = typer.Option(False, "--force", help="replace an existing FILE"),
):
    """Make one token per client: FILE keeps only their hashes; the tokens are printed once, `<client-id> <token>`."""
    from .deploy.tokens import TokenStore

    try:
        if max_examples is not None and max_examples < 0:
            raise FedweaveError(f"--max-examples must be >= 0, got {max_examples}.")
        store, plain = TokenStore.generate(clients, first_id, max_examples)
        store.save(out_file, overwrite=force)
    except FedweaveError as exc:
        _fail(exc)
    for cid, tok in plain.items():
        typer.echo(f"{cid} {tok}")
    console.print(f"{len(plain)} tokens; hashes written to {out_file}. The tokens are shown only now: hand each "
                  "client its line.", highlight=False)


def _show_config_warnings() -> None:
    """Config warnings as one yellow line each, not Python's file:line format."""
    import warnings

    from .config import ConfigWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main() -> None:
    _show_config_warnings()
    try:
        app()
    except FedweaveError as exc:  # errors raised outside a command body
        console.print(f"error: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
