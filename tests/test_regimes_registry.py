"""Regime registry: sources, duplicates, malformed plugins, unknown names."""

import textwrap
from pathlib import Path

import pytest

from regimes import registry
from regimes.registry import RegimeError, get_regime, list_regimes, regime_source

BUILTINS = {"stoichiometry", "rate_constants", "homeostasis", "sparse_connectivity", "low_rank_connectivity"}

PLUGIN = '''
from pathlib import Path
from regimes.base import MetricSpec, ParamSpec, Regime

HERE = Path(__file__).resolve().parent
REGIME = Regime(
    name={name!r}, title="Toy", description="toy regime", package="toypkg_{tag}",
    package_dir=HERE, train_entry="toypkg_{tag}.train",
    mutable=[ParamSpec(key="training.lr", type="float", low=1e-4, high=1e-1, log=True)],
    frozen=["simulation.*"], metrics=[MetricSpec(name="r2")], primary_metric={primary!r},
    instructions=HERE / "instructions.md",
)
'''


def _write_plugin(root: Path, dirname: str, name: str, primary: str = "r2", as_file: bool = False) -> Path:
    text = textwrap.dedent(PLUGIN.format(name=name, tag=dirname, primary=primary))
    if as_file:
        (root / "instructions.md").write_text("# toy\n")
        path = root / f"{dirname}.py"
    else:
        (root / dirname).mkdir(parents=True)
        (root / dirname / "instructions.md").write_text("# toy\n")
        path = root / dirname / "regime.py"
    path.write_text(text)
    return path


def test_builtins_listed_and_unknown_name_lists_choices():
    names = [r.name for r in list_regimes()]
    assert BUILTINS <= set(names)
    assert get_regime("homeostasis").primary_metric == "avg_slope_ratio"
    with pytest.raises(RegimeError, match="unknown regime 'nosuch'; valid choices: .*homeostasis"):
        get_regime("nosuch")
    assert regime_source("homeostasis") == "built-in module regimes.homeostasis"


def test_regime_path_directory_and_file_plugins(tmp_path):
    _write_plugin(tmp_path, "alpha", "alpha_regime")
    _write_plugin(tmp_path, "beta", "beta_regime", as_file=True)
    (tmp_path / "helper.py").write_text("X = 1\n")  # a .py without REGIME is not a plugin
    names = [r.name for r in list_regimes([tmp_path])]
    assert names[-2:] == ["alpha_regime", "beta_regime"]
    r = get_regime("alpha_regime", [tmp_path])
    assert r.train_entry == "toypkg_alpha.train"
    assert "alpha" in regime_source("alpha_regime", tmp_path)


def test_duplicate_name_names_both_sources(tmp_path):
    _write_plugin(tmp_path, "dup", "homeostasis")
    with pytest.raises(RegimeError, match=r"duplicate regime name 'homeostasis': file .*dup/regime.py and built-in"):
        list_regimes([tmp_path])


def test_malformed_plugin_names_plugin_and_field(tmp_path):
    _write_plugin(tmp_path, "broken", "broken_regime", primary="nosuch")
    with pytest.raises(RegimeError) as e:
        list_regimes([tmp_path])
    msg = str(e.value)
    assert "broken/regime.py" in msg and "primary_metric" in msg and "\n" not in msg


def test_plugin_without_regime_and_bad_export(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "regime.py").write_text("X = 1\n")
    with pytest.raises(RegimeError, match="empty/regime.py: defines no REGIME"):
        list_regimes([tmp_path])
    (tmp_path / "empty" / "regime.py").write_text("REGIME = 42\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "wrong").mkdir()
    (other / "wrong" / "regime.py").write_text("REGIME = 42\n")
    with pytest.raises(RegimeError, match="must be a regimes.base.Regime instance.*got int"):
        list_regimes([other])


def test_plugin_missing_instructions_file(tmp_path):
    path = _write_plugin(tmp_path, "noinstr", "noinstr_regime")
    (path.parent / "instructions.md").unlink()
    with pytest.raises(RegimeError, match="field instructions: file .* does not exist"):
        list_regimes([tmp_path])


def test_entry_point_instance_and_callable(monkeypatch, tmp_path):
    path = _write_plugin(tmp_path, "ep", "ep_regime")
    module = registry._import_file(path)

    class FakeEP:
        def __init__(self, name, obj, module="somepkg.plugin"):
            self.name, self._obj, self.module, self.value = name, obj, module, f"{module}:REGIME"

        def load(self):
            return self._obj

    eps = [FakeEP("a", module.REGIME),
           FakeEP("b", lambda: module.REGIME.model_copy(update={"name": "ep_callable"})),
           FakeEP("builtin", object(), module="regimes.homeostasis")]  # installed built-in: skipped
    monkeypatch.setattr(registry.importlib.metadata, "entry_points", lambda group: eps)
    names = [r.name for r in list_regimes()]
    assert "ep_regime" in names and "ep_callable" in names
    eps.append(FakeEP("c", "not a regime"))
    with pytest.raises(RegimeError, match="entry point c = somepkg.plugin:REGIME"):
        list_regimes()


def test_plugin_consistency_checks_name_the_field(tmp_path):
    path = _write_plugin(tmp_path, "incons", "incons_regime")
    text = path.read_text()
    path.write_text(text.replace('instructions=HERE / "instructions.md",',
                                 'instructions=HERE / "instructions.md", log_metrics=["nosuch"],'))
    with pytest.raises(RegimeError, match="'incons_regime' .*incons/regime.py.*field log_metrics: 'nosuch'"):
        list_regimes([tmp_path])
    path.write_text(text.replace('train_entry="toypkg_incons.train"', 'train_entry="other.train"') + "\n")
    with pytest.raises(RegimeError, match="field train_entry"):
        list_regimes([tmp_path])
