import pytest

from qr_ds.config import ConfigError, from_dict, load_config
from qr_ds.train.config import TrainConfig

BASE = {"students": [{"name": "a", "model": "m1"}, {"name": "b", "model": "m2"}], "data": {"pool": "p.jsonl"}}


def _with(**over):
    d = {**BASE, **over}
    return from_dict(TrainConfig, d)


def test_defaults_load():
    cfg = _with()
    assert cfg.students[1].lora.r == 32 and cfg.router.enabled and cfg.placement == "separate"


@pytest.mark.parametrize("over,needle", [
    ({"lamda1": 0.1}, "unknown config key 'lamda1'"),
    ({"router": {"tau": "hot"}}, "config key 'router.tau': got 'hot'; allowed: a number"),
    ({"router": {"tau": 0}}, "config key 'router.tau': got 0.0; allowed: >= 0.001"),
    ({"placement": "sideways"}, "config key 'placement': got 'sideways'; allowed: one of 'separate', 'colocated'"),
    ({"students": [{"name": "a", "model": "m", "lora": {"r": 0}}, {"name": "b", "model": "m"}]},
     "config key 'students[0].lora.r': got 0; allowed: >= 1"),
    ({"students": [{"name": "a", "model": "m", "ranks": True}, {"name": "b", "model": "m"}]},
     "config key 'students[0].ranks': got True; allowed: int | 'auto'"),
    ({"students": [{"name": "a", "model": "m", "ranks": 0}, {"name": "b", "model": "m"}]},
     "config key 'students[0].ranks': got 0; allowed: >= 1 or 'auto'"),
    ({"students": [{"name": "a", "model": "m"}]}, "need >= 2 students"),
    ({"students": [{"name": "a", "model": "m"}, {"name": "a", "model": "m"}]}, "must be unique"),
    ({"data": {}}, "config key 'data.pool' is required"),
    ({"students": [{"name": "a", "model": "m", "finetune": "full", "lora": {"quantize": "nf4"}},
                   {"name": "b", "model": "m"}]}, "config key 'students[0].lora.quantize': 'nf4'"),
    ({"students": [{"name": "a", "model": "m", "finetune": "partial"}, {"name": "b", "model": "m"}]},
     "config key 'students[0].finetune': got 'partial'; allowed: 'lora' | 'full'"),
    ({"router": {"withhold": {"c": "ids.txt"}}}, "config key 'router.withhold': ['c'] name no student"),
    ({"router": {"withhold": {"a": "/nonexistent/ids.txt"}}}, "config key 'router.withhold.a': no file /nonexistent"),
    ({"router": {"fixed": {"c": ["cot"]}}}, "config key 'router.fixed': ['c'] name no student"),
    ({"router": {"enabled": False, "fixed": {"a": ["cot"]}}}, "config key 'router.fixed': a fixed assignment needs"),
])
def test_bad_values_name_the_key(over, needle):
    with pytest.raises(ConfigError) as e:
        _with(**over)
    assert needle in str(e.value)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("students: [\n")
    with pytest.raises(ConfigError, match=r"c.yaml:2:1: not valid YAML: expected the node content, but found "
                                          r"'<stream end>' \(while parsing a flow node opened at line 2\)$"):
        load_config(TrainConfig, p)
    p.write_text("students: []\ndata: {pool: x}\nepochs: -1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: config key 'epochs': got -1; allowed: >= 1"):
        load_config(TrainConfig, p)


def test_overrides_and_scientific_floats(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**BASE, "students": [{"name": "a", "model": "m", "lr": "5e-6"},
                                                      {"name": "b", "model": "m"}]}))
    cfg = load_config(TrainConfig, p, {"students.1.lr": 1e-4, "lambda2": 0})
    assert cfg.students[0].lr == 5e-6 and cfg.students[1].lr == 1e-4 and not cfg.use_mutual


def test_config_reference_is_current():
    from pathlib import Path

    from qr_ds.configdoc import render

    doc = Path(__file__).resolve().parents[1] / "docs" / "config-reference.md"
    assert doc.read_text() == render(), "regenerate: python -m qr_ds.configdoc > docs/config-reference.md"


@pytest.mark.parametrize("yaml_value", [".nan", ".inf", "-.inf", "nan", "'inf'", "1e999"])
def test_non_finite_floats_are_refused_naming_the_key(tmp_path, yaml_value):
    p = tmp_path / "c.yaml"
    p.write_text(f"students:\n- {{name: a, model: m, lr: {yaml_value}}}\n- {{name: b, model: m}}\n"
                 "data: {pool: p.jsonl}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: config key 'students\[0\].lr': got .*; allowed: a finite number"):
        load_config(TrainConfig, p)


def test_bad_override_paths_name_the_override():
    from qr_ds.config import apply_override

    for dotted in ("students.5.lr", "students.x.lr", "epochs.x"):
        with pytest.raises(ConfigError, match=f"override '{dotted}'"):
            apply_override({"students": [{}], "epochs": 1}, dotted, 1)


@pytest.mark.parametrize("content,needle", [
    (b"lr: 1\n\xff\n", "not UTF-8"),
    (b"- a\n- b\n", "expected a mapping at the top level, got list"),
])
def test_unreadable_yaml_names_the_file(tmp_path, content, needle):
    p = tmp_path / "c.yaml"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=f"c.yaml: {needle}"):
        load_config(TrainConfig, p)


# ---- issue 23: YAML that loads as meant, or not at all ----
from dataclasses import dataclass, field  # noqa: E402

def test_bom_merge_keys_and_a_one_element_string_load_as_meant(tmp_path):
    from qr_ds.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfbase: &base {lr: 1, name: x}\nstudent:\n  <<: *base\n  lr: 2\n")
    assert load_yaml(path) == {"base": {"lr": 1, "name": "x"}, "student": {"lr": 2, "name": "x"}}

    @dataclass
    class C:
        tags: list[str] = field(default_factory=list)
        steps: tuple[int, ...] = ()

    assert from_dict(C, {"tags": "jsonl", "steps": 3}) == C(tags=["jsonl"], steps=(3,))
    with pytest.raises(ConfigError, match=r"config key 'steps': got 'x'; allowed: list\[int\]"):
        from_dict(C, {"steps": "x"})


@pytest.mark.parametrize("text,needle", [
    ("a: &a [*a]\n", "c.yaml:1: an alias refers to a node that contains it"),
    ("x: 1\ny: {z: 2, z: 3}\n", "c.yaml:2: duplicate key 'z' (first at line 2)"),
    ("[" * 5000 + "]" * 5000 + "\n", "c.yaml: nested too deeply"),
])
def test_yaml_loops_duplicates_and_deep_nesting_are_refused(tmp_path, text, needle):
    from qr_ds.config import load_yaml

    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as e:
        load_yaml(tmp_path / "c.yaml")
    assert needle in str(e.value)
