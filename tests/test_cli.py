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


def test_help_shows_the_options_a_user_changes_and_help_all_shows_every_one(capsys):
    """issue 50: at most 20 options in --help of the long commands, grouped; the rest in --help-all, and still
    accepted as flags."""
    import re

    from anomalign.cli import main as cli_main

    def shown(argv):
        with pytest.raises(SystemExit):
            cli_main(argv)
        text = capsys.readouterr().out
        return text, re.findall(r"^  (-[-\w]+)", text, flags=re.M)
    for command in ("train-segmenter", "train-generator", "generate", "run"):
        text, flags = shown([command, "--help"])
        assert len(flags) <= 20, (command, flags)
        assert "data options:" in text and "output options:" in text and "--help-all" in flags
        every, all_flags = shown([command, "--help-all"])
        assert set(flags) < set(all_flags) and "more options:" in every
    assert "--fb-rows" in shown(["train-segmenter", "--help-all"])[1]
    assert "--fb-rows" not in shown(["train-segmenter", "--help"])[1]
    from anomalign.cli import build_parser
    args = build_parser().parse_args(["train-segmenter", "--train", "d", "--out", "o", "--fb-rows", "2"])
    assert args.fb_rows == "2"  # a hidden option is still a flag (typed when the config is built)
