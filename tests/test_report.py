"""Reports: table statistics against hand-computed values, plots and the HTML page."""

import base64
import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fedweave.cli import app
from fedweave.errors import ConfigError
from fedweave.report import load_runs, markdown_table, summary_table, write_report


def fake_run(path: Path, *, method: str, seed: int, final: float, best: float, up: float = 0, down: float = 0,
             ttt=None, status="completed", target=0.5, metric="accuracy", higher=True, alpha=0.5, scores=None):
    """A run directory as fedweave writes it, with chosen numbers."""
    path.mkdir(parents=True)
    config = {"name": "t", "seed": seed, "method": {"name": method}, "data": {"partition": {"alpha": alpha}},
              "eval": {"target": target}, "output": {"dir": str(path)}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    summary = {"name": "t", "method": method, "status": status, "seed": seed, "metric_name": metric,
               "higher_is_better": higher, "final_metric": final, "best_metric": best, "time_to_target_s": ttt,
               "bytes_up": up, "bytes_down": down}
    (path / "summary.json").write_text(json.dumps(summary))
    records = []
    for r in (1, 2, 3):
        rec = {"round": r, "virtual_time_s": 10.0 * r + seed, "bytes_up": up * r / 3, "bytes_down": down * r / 3,
               metric: final * r / 3}
        if scores is not None and r == 3:
            rec["client_scores"] = scores
        records.append(rec)
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in records))


def fake_sweep(root: Path) -> Path:
    """Three combinations x three seeds, with the hand values used below."""
    runs = []
    spec = {
        # final, best, MB up (= MB down), time to target
        "fedavg": [(0.7, 0.75, 1.0, 10.0), (0.8, 0.85, 2.0, 20.0), (0.9, 0.95, 3.0, None)],
        "fedprox": [(0.6, 0.9, 0.5, 30.0), (0.6, 0.9, 0.5, 30.0), (0.9, 0.9, 0.5, 30.0)],
        "fedadam": [(0.5, 0.6, 1.0, None), (0.5, 0.6, 1.0, None), (0.1, 0.2, 1.0, None)],
    }
    for method, values in spec.items():
        for seed, (final, best, mb, ttt) in enumerate(values):
            rel = f"method.name={method}/seed{seed}"
            status = "diverged" if method == "fedadam" and seed == 2 else "completed"
            fake_run(root / rel, method=method, seed=seed, final=final, best=best, up=mb * 1e6, down=mb * 1e6,
                     ttt=ttt, status=status, scores=[final - 0.1, final, final + 0.05])
            runs.append({"dir": rel, "combination": f"method.name={method}", "seed": seed,
                         "params": {"method.name": method}})
    (root / "sweep.json").write_text(json.dumps({"format": 1, "grid": [{"key": "method.name",
                                                 "values": list(spec)}], "seeds": [0, 1, 2], "runs": runs}))
    return root


def row(table_md: str, name: str) -> list[str]:
    line = next(ln for ln in table_md.splitlines() if ln.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_statistics_and_bold_marks(tmp_path):
    md = markdown_table(load_runs([fake_sweep(tmp_path / "sw")]))
    header = row(md, "method.name")
    assert header == ["method.name", "runs", "final accuracy", "best accuracy", "time to accuracy ≥ 0.5 (s)",
                      "MB up+down"]
    # sample standard deviations (ddof=1): sd(0.7, 0.8, 0.9) = 0.1; sd(0.6, 0.6, 0.9) = 0.1732; sd(2, 4, 6) = 2.
    # final: fedavg leads fedprox by paired differences (0.1, 0.2, 0.0): t = 0.1 / (0.1/√3) = 1.73 with 2 degrees
    # of freedom, one-sided p = 0.11 > 0.05 — within the noise, so no bold.
    assert row(md, "fedavg") == ["fedavg", "3/3", "0.8000 ± 0.1000", "0.8500 ± 0.1000", "15.0 ± 7.1 (2/3)",
                                 "4.00 ± 2.00"]
    # best: fedprox over fedavg by (0.15, 0.05, −0.05): t = 0.87, p = 0.24, no bold; time: only fedprox reached the
    # target in 3/3 runs (bold by count); bytes: 1 MB in every seed vs fedadam's 2 MB in both its seeds — paired
    # differences (1, 1) with no spread, so the lead is beyond the noise
    assert row(md, "fedprox") == ["fedprox", "3/3", "0.7000 ± 0.1732", "0.9000 ± 0.0000", "**30.0 ± 0.0 (3/3)**",
                                  "**1.00 ± 0.00**"]
    # the diverged seed is counted but left out of the statistics
    assert row(md, "fedadam") == ["fedadam", "2/3 (1 diverged)", "0.5000 ± 0.0000", "0.6000 ± 0.0000",
                                  "— (0/2)", "2.00 ± 0.00"]
    assert "ddof=1" in md and "paired t-test" in md


def test_lower_is_better_metric_bolds_the_smallest(tmp_path):
    # two seeds each; b is lower by (10, 10): paired differences with no spread, a lead beyond the noise
    for i, (method, value) in enumerate([("a", 40.0), ("b", 30.0)]):
        for seed in (0, 1):
            fake_run(tmp_path / method / f"s{seed}", method=method, seed=seed, final=value + seed, best=value - 1,
                     metric="perplexity", higher=False, target=None, up=1e6 * (i + 1))
    runset = load_runs([tmp_path])
    assert runset.label_keys == ["method.name"] and not runset.higher_is_better
    table = summary_table(runset)
    finals = {r[0].text: r[2] for r in table.rows}
    assert finals["b"].bold and not finals["a"].bold and finals["b"].text == "30.5000 ± 0.7071"
    assert not any("time to" in h for h in table.headers)


def test_no_bold_with_one_run_per_row_or_within_the_noise(tmp_path):
    # one seed per row: no measure of noise, so no winner is declared however large the gap
    for method, value in (("a", 0.9), ("b", 0.1)):
        fake_run(tmp_path / "one" / method, method=method, seed=0, final=value, best=value)
    finals = [r[2] for r in summary_table(load_runs([tmp_path / "one"])).rows]
    assert not any(c.bold for c in finals)
    # a clear lead: differences (0.10, 0.11, 0.09) -> t = 0.10 / (0.01/√3) = 17.3, p = 0.002: bold
    # a noisy one: differences (0.30, −0.25, 0.10) -> t = 0.05 / (0.278/√3) = 0.31, p = 0.39: no bold
    for name, gaps in (("clear", (0.10, 0.11, 0.09)), ("noisy", (0.30, -0.25, 0.10))):
        for seed, gap in enumerate(gaps):
            fake_run(tmp_path / name / "a" / f"s{seed}", method="a", seed=seed, final=0.5 + gap, best=0.5 + gap)
            fake_run(tmp_path / name / "b" / f"s{seed}", method="b", seed=seed, final=0.5, best=0.5)
        bold = {r[0].text: r[2].bold for r in summary_table(load_runs([tmp_path / name])).rows}
        assert bold == {"a": name == "clear", "b": False}


def test_labels_are_the_differing_config_keys(tmp_path):
    fake_run(tmp_path / "x" / "r1", method="fedavg", seed=0, final=0.5, best=0.5, alpha=0.1)
    fake_run(tmp_path / "x" / "r2", method="fedavg", seed=1, final=0.6, best=0.6, alpha=0.1)
    fake_run(tmp_path / "y" / "r3", method="fedavg", seed=0, final=0.7, best=0.7, alpha=1.0)
    runset = load_runs([tmp_path])
    assert runset.label_keys == ["data.partition.alpha"]
    assert [(g.title, len(g.runs)) for g in runset.groups()] == [("0.1", 2), ("1.0", 1)]


def test_report_writes_pngs_and_a_self_contained_page(tmp_path):
    sweep = fake_sweep(tmp_path / "sw")
    result = write_report([sweep], tmp_path / "out" / "cmp.html")
    names = sorted(p.name for p in result.images)
    assert names == ["cmp-client-scores.png", "cmp-metric-vs-bytes.png", "cmp-metric-vs-round.png",
                     "cmp-metric-vs-time.png"]
    page = result.html.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == 4
    for path in result.images:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
        assert base64.b64encode(data).decode() in embedded
    assert "<table>" in page and "<strong>30.0 ± 0.0 (3/3)</strong>" in page and path.name in page


def test_report_of_a_real_run(tmp_path):
    from fedweave import run

    run({"data": {"partition": {"num_clients": 4}}, "model": {"hidden": [8]}, "client": {"epochs": 1},
         "schedule": {"rounds": 2, "clients_per_round": 2}}, out=tmp_path / "run")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "run" / "report.html").read_text()
    assert "fedavg" in page and page.count("data:image/png;base64,") == 3  # no per-client scores recorded
    assert (tmp_path / "run" / "report-metric-vs-round.png").stat().st_size > 0


def test_no_runs_found(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no runs found in"):
        load_runs([tmp_path / "empty"])
    res = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "no runs found in" in res.output


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"fedweave\[plot\]"):
        write_report([fake_sweep(tmp_path / "sw")], tmp_path / "r.html")


def test_plots_facet_by_the_keys_beside_the_method(tmp_path):
    from fedweave.report import _panels, facets, make_figures

    # fake_sweep varies only the method; add a second key (alpha) by hand
    for method in ("fedavg", "fedprox"):
        for alpha in (0.1, 1.0):
            for seed in (0, 1):
                fake_run(tmp_path / f"{method}-{alpha}" / f"s{seed}", method=method, seed=seed, final=0.5 + alpha / 10,
                         best=0.6, alpha=alpha)
    runset = load_runs([tmp_path])
    assert sorted(runset.label_keys) == ["data.partition.alpha", "method.name"]
    assert facets(runset) == ("method.name", ["data.partition.alpha"])
    panels, line = _panels(runset)
    assert [(title, sorted(line[g.title] for g in groups)) for title, groups in panels] == [
        ("alpha=0.1", ["fedavg", "fedprox"]), ("alpha=1.0", ["fedavg", "fedprox"])]
    fig = make_figures(runset)["metric-vs-round"]
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 2 and [ax.get_title() for ax in visible] == ["alpha=0.1", "alpha=1.0"]
    assert all(len(ax.get_lines()) == 2 for ax in visible) and len(fig.legends) == 1


def test_many_unrelated_runs_get_a_warning(tmp_path):
    for i in range(12):
        fake_run(tmp_path / f"m{i}", method=f"m{i}", seed=0, final=0.5, best=0.5)
    result = write_report([tmp_path], tmp_path / "r.html")
    assert result.warnings and "12 lines share one panel" in result.warnings[0]
    assert "12 lines share one panel" in result.html.read_text()
