"""The figure that matters: a personalized run is judged by personalized accuracy in its
summary, the CLI's final table and a sweep's table — which then crowns the right method."""

from fedweave import run
from fedweave.cli import human_bytes, summary_rows
from fedweave.report import load_runs, summary_table

# 10 clients holding 2 classes each: a FedPer client's personal head only has to separate its
# own 2 classes (chance 0.5), FedAvg's one global model all 10 (chance 0.1) after 5 short rounds
PERSONAL = {"eval": {"personalized": True}, "model": {"hidden": [32]}, "client": {"epochs": 1},
            "data": {"partition": {"kind": "classes", "num_clients": 10, "classes_per_client": 2}},
            "schedule": {"rounds": 5, "clients_per_round": 5}}


def test_personalized_sweep_crowns_the_personalized_winner(tmp_path):
    summaries = {}
    for method in ("fedavg", "fedper"):
        for seed in (0, 1, 2):
            res = run({**PERSONAL, "seed": seed, "method": {"name": method}}, out=tmp_path / method / f"s{seed}")
            s = res.summary
            assert s["metric_name"] == "personalized_acc_mean" and s["higher_is_better"] is True
            assert s["final_metric"] == res.history[-1]["personalized_acc_mean"]
            # the global model's figure stays beside it
            assert s["final_global_accuracy"] == s["final_accuracy"] == res.history[-1]["accuracy"]
            summaries[method, seed] = s
    table = summary_table(load_runs([tmp_path]))
    assert table.headers[2] == "final personalized_acc_mean"
    rows = {r[0].text: r for r in table.rows}
    assert rows["fedper"][2].bold and not rows["fedavg"][2].bold
    # FedPer wins by personalized accuracy in every seed, whatever the global accuracies say
    assert all(summaries["fedper", s]["final_metric"] > summaries["fedavg", s]["final_metric"] for s in (0, 1, 2))
    labels = [label for label, _ in summary_rows(summaries["fedper", 0])]
    assert labels[:4] == ["rounds_completed", "final_personalized_acc_mean", "best_personalized_acc_mean",
                          "final_global_accuracy"]


def test_final_table_rows_human_bytes_and_only_figures_that_apply():
    summary = {"metric_name": "accuracy", "rounds_completed": 3, "rounds": 3, "final_metric": 0.5, "best_metric": 0.6,
               "time_to_target_s": None, "bytes_up": 2_208_800, "bytes_down": 999, "final_attack_success_rate": 0.25,
               "client_acc_mean": None, "executor": "serial"}
    rows = dict(summary_rows(summary))
    assert rows["bytes_up"] == "2.21 MB" and rows["bytes_down"] == "999 B"
    assert rows["final_attack_success_rate"] == "0.25" and rows["final_accuracy"] == "0.5"
    assert "time_to_target_s" not in rows and "client_acc_mean" not in rows
    assert summary_rows({**summary, "rounds_completed": 2})[0] == ("rounds_completed", "2 of 3")
    assert human_bytes(1.5e9) == "1.5 GB" and human_bytes(12_345) == "12.3 kB"
