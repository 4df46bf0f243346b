"""The familyview command as an IG officer and an integration engineer use it."""
from __future__ import annotations

from app import cli
from consent.policies import load_policy


def test_policy_explain_prints_every_rule_with_its_basis(capsys):
    assert cli.main(["policy", "explain"]) == 0
    out = capsys.readouterr().out
    policy = load_policy()
    assert policy.version in out
    for rule_id in ("infant-direct-care", "adult-sensitive-safeguarding", "infant-contact-direct-care"):
        assert rule_id in out
    assert "Sch 1 para 18" in out


def test_policy_check_accepts_the_baseline_and_refuses_a_broken_file(tmp_path, capsys):
    from consent.policies import BASELINE_POLICY_PATH

    good = BASELINE_POLICY_PATH.read_text()
    assert cli.main(["policy", "check", str(BASELINE_POLICY_PATH)]) == 0
    broken = tmp_path / "edited.yaml"
    broken.write_text(good.replace("basis: safeguarding", "basis: because-i-said-so", 1))
    assert cli.main(["policy", "check", str(broken)]) == 1
    assert "because-i-said-so" in capsys.readouterr().out
