"""The CLI: --help on every command, clean errors instead of tracebacks."""
import pytest

from anomalign.cli import COMMANDS, DATA_COMMANDS, main


@pytest.mark.parametrize("argv", [[], ["data"], *[[c, "--help"] for c in COMMANDS],
                                  *[["data", c, "--help"] for c in DATA_COMMANDS]])
def test_help_everywhere(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 0
    out = capsys.readouterr().out
    assert "usage:" in out
    if argv and argv[-1] == "--help":
        assert "--config" in out


def test_top_level_help_lists_every_command(capsys):
    main([])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
    main(["data"])
    out = capsys.readouterr().out
    assert all(c in out for c in DATA_COMMANDS)


def test_missing_required_options_is_a_clean_error(capsys):
    assert main(["train-generator"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "data" in err and "Traceback" not in err


def test_bad_yaml_option_is_a_clean_error(tmp_path, capsys):
    y = tmp_path / "c.yaml"
    y.write_text("alpha: lots\n")
    assert main(["train-generator", "--config", str(y), "--data", "d", "--out", "o"]) == 2
    assert "expected a number" in capsys.readouterr().err
