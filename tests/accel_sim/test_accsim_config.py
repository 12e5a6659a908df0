"""Config validation: every bad field is named with its allowed values."""
import pytest

from accel_sim.config import AccelConfig, ConfigError, load_config


def test_defaults_are_int8_32x32():
    cfg = AccelConfig()
    assert (cfg.rows, cfg.cols, cfg.word, cfg.word_bytes) == (32, 32, "int8", 1)


@pytest.mark.parametrize("field,value,needle", [
    ("dataflow", "xs", "dataflow: got 'xs'; allowed: os, ws, is"),
    ("word", "int4", "allowed: int8, int16, fp16"),
    ("rows", 0, "rows: 0 out of range"),
    ("cols", 3.5, "cols: expected an integer"),
    ("tech_nm", 7, "tech_nm: got 7; allowed: 16, 22"),
    ("ifmap_sram_kb", -1, "ifmap_sram_kb: -1 out of range"),
    ("dram_bytes_per_cycle", "fast", "dram_bytes_per_cycle: expected a number"),
    ("gate_schedule", "greedy", "allowed: auto, column, union"),
    ("dense_fallback", 1, "dense_fallback: expected true or false"),
    ("double_buffer", "yes", "double_buffer: expected true or false"),
])
def test_bad_field_is_named(field, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        AccelConfig(**{field: value})


def test_yaml_load_and_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("array: 16x8\ndataflow: os\nword: fp16\nofmap_sram_kb: 64\n")
    cfg = load_config(good)
    assert (cfg.rows, cfg.cols, cfg.dataflow, cfg.word, cfg.ofmap_sram_kb) == (16, 8, "os", "fp16", 64)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: 16\nbandwidth: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown field\(s\) bandwidth; allowed: array, rows"):
        load_config(bad)
    bad.write_text("dataflow: rs\n")
    with pytest.raises(ConfigError, match="bad.yaml: dataflow: got 'rs'"):
        load_config(bad)
    bad.write_text("array: 16by16\n")
    with pytest.raises(ConfigError, match="array: expected ROWSxCOLS"):
        load_config(bad)
