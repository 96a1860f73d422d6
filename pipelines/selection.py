"""Scoring models from their out-of-fold predictions, comparing them, choosing one."""

from __future__ import annotations

from .metrics import binary_metrics, bootstrap_ci, delong_test, paired_bootstrap_auc

__all__ = ["SELECTION_MARGIN", "evaluate", "compare", "select_model"]

# CV AUC a simpler model may lose and still be selected: a tenth of the half-width
# of a 308-image site's AUC CI (about +-0.02), far below what a new site resolves
SELECTION_MARGIN = 0.002


def evaluate(y, p, groups, threshold, n_boot, seed):
    """Metrics at ``threshold`` with patient-bootstrap 95 % CIs."""
    metrics = binary_metrics(y, p, threshold)
    metrics["ci"] = bootstrap_ci(y, p, groups, threshold, n_boot=n_boot, seed=seed)
    return metrics


def compare(y, p_model, p_reference, groups, n_boot, seed):
    """Paired AUC difference model - reference: DeLong and patient bootstrap, and a verdict."""
    delong = delong_test(y, p_model, p_reference)
    boot = paired_bootstrap_auc(y, p_model, p_reference, groups, n_boot=n_boot, seed=seed)
    significant = boot["ci"][0] > 0 or boot["ci"][1] < 0
    if not significant:
        verdict = "no significant difference"
    else:
        verdict = "better than baseline" if boot["diff"] > 0 else "worse than baseline"
    return {"diff": boot["diff"], "ci": boot["ci"], "delong_p": delong["p_value"],
            "bootstrap_p": boot["p_value"], "verdict": verdict}


def select_model(models, oof, y, groups, n_boot=1000, seed=0, margin=SELECTION_MARGIN):
    """The model the CV results recommend: the simplest one non-inferior to the best.

    Among non-baseline models, those whose CV AUC is non-inferior to the best
    one's within ``margin`` are eligible: the upper end of the 95 % CI of
    AUC(best) - AUC(model) (patient-level paired bootstrap on the out-of-fold
    predictions ``oof[name]``) is below ``margin``, or the CI reaches 0. The
    one with the fewest extractors wins (the cheapest to score), then the
    highest CV AUC. Returns ``(name, {candidate: bootstrap result})``.
    """
    candidates = [n for n in models if not n.startswith("baseline/")]
    best = max(candidates, key=lambda n: models[n]["cv"]["auc"])
    tests = {n: paired_bootstrap_auc(y, oof[best], oof[n], groups, n_boot=n_boot, seed=seed)
             for n in candidates if n != best}
    eligible = [best] + [n for n, t in tests.items() if t["ci"][0] <= 0 or t["ci"][1] < margin]
    chosen = min(eligible, key=lambda n: (models[n]["features"].count("+"),
                                          -models[n]["cv"]["auc"]))
    return chosen, tests
