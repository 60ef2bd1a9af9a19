"""The soak as a mode of `retinaunet-deploy bench`: its pass criteria on planted figures,
and a few seconds of it on the tiny run, passing and (with results made to differ)
failing with a non-zero exit code."""

import json

import pytest
from click.testing import CliRunner

from retinaunet_deploy.bench import soak
from retinaunet_deploy.cli import cli


def test_rss_figures_compare_the_first_and_last_windows():
    samples = [(t, 100.0 + (4.0 if t >= 200 else 0.0)) for t in range(301)]
    rss = soak.rss_verdict(samples, duration=300)
    assert rss["rss_window_s"] == 60
    assert rss["rss_first_mib"] == 100.0 and rss["rss_last_mib"] == 104.0
    assert rss["rss_growth"] == pytest.approx(0.04) and rss["rss_peak_mib"] == 104.0
    short = soak.rss_verdict([(0.0, 50.0), (0.5, 50.0), (2.0, 60.0), (2.5, 60.0)], duration=3)
    assert short["rss_window_s"] == 1 and short["rss_growth"] == pytest.approx(0.2)


@pytest.mark.parametrize("growth,mismatched,errors,passed", [
    (0.04, 0, [], True), (-0.05, 0, [], True), (0.051, 0, [], False), (-0.06, 0, [], False),
    (0.0, 1, [], False), (0.0, 0, ["RuntimeError: boom"], False)])
def test_pass_criteria(growth, mismatched, errors, passed):
    assert soak.soak_passed(growth, mismatched, errors) is passed
    reasons = soak.failures({"rss_growth": growth, "mismatched_results": mismatched,
                             "errors": errors})
    assert (reasons == []) is passed


def _soak(run, out, *extra):
    return CliRunner().invoke(cli, ["bench", str(run), "--soak", "--soak-minutes", "0.05",
                                    "--callers", "2", "--threads", "2", "--out", str(out),
                                    *extra])


def test_a_short_soak_on_the_tiny_run(tiny_exported, tmp_path):
    run, _ = tiny_exported
    result = _soak(run, tmp_path)
    figures = json.loads((tmp_path / "result.json").read_text())
    # Every call agreed and none raised; RSS over 3 s is the machine's, so the exit code
    # must follow whatever the soak decided.
    assert figures["mismatched_results"] == 0 and figures["errors"] == []
    assert figures["calls"] > 0 and len(figures["calls_per_caller"]) == 2
    assert figures["artifact"].endswith("model.onnx") and figures["threads"] == 2
    assert figures["passed"] == soak.soak_passed(figures["rss_growth"], 0, [])
    assert result.exit_code == (0 if figures["passed"] else 1), result.output
    assert '"passed"' in result.output and "result.json and rss.png" in result.output
    assert (tmp_path / "rss.png").stat().st_size > 1000


def test_a_soak_whose_results_differ_fails(tiny_exported, tmp_path, monkeypatch):
    run, _ = tiny_exported
    calls = iter(range(10**9))
    monkeypatch.setattr(soak, "fingerprint", lambda prediction: str(next(calls)))
    result = _soak(run, tmp_path)
    figures = json.loads((tmp_path / "result.json").read_text())
    assert not figures["passed"] and figures["mismatched_results"] == figures["calls"] > 0
    assert result.exit_code == 1
    assert "the soak failed" in result.output and "differ from the first call's" in result.output


def test_soak_usage(tmp_path):
    result = CliRunner().invoke(cli, ["bench", str(tmp_path), "--soak", "--out",
                                      str(tmp_path / "out"), "--soak-artifact", "missing.onnx"])
    assert result.exit_code == 1 and "missing.onnx not found" in result.output
    result = CliRunner().invoke(cli, ["bench", "--latency-only", "--preset", "tiny", "--soak"])
    assert result.exit_code == 2 and "--soak and --latency-only are separate bench modes" in \
        result.output


def test_a_short_soak_that_grows_says_it_measured_the_warm_up():
    result = {"errors": [], "mismatched_results": 0, "rss_growth": 0.35}
    short = soak.failures({**result, "minutes": 0.1})
    assert len(short) == 1 and "warm-up" in short[0] and "--soak-minutes 3" in short[0]
    long = soak.failures({**result, "minutes": 5})
    assert len(long) == 1 and "warm-up" not in long[0]
    assert soak.failures({**result, "rss_growth": 0.01, "minutes": 0.1}) == []
