"""Bad input, row by row: each config or command line exits with the documented status (2 for
bad input) and a message that names the key or construct to fix.

Rows run in-process through ``solver.cli.main`` (same code path as the shell), a few through a
real ``python -m solver`` subprocess. ``config --check`` runs every check short of the time
loop, so every row that ``run`` refuses is refused by ``config --check`` too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from solver.cli import main
from solver.io import toml_value

MESHES = Path(__file__).resolve().parents[1] / "meshes"

# A small valid config (S^1, 32 cells), one TOML body per section; rows replace sections.
GOOD = {
    "mesh": "sphere = 1\ncells = 32",
    "model": "V = [[1.0, 0.0], [0.0, 1.0]]",
    "initial": 'kind = "vmf"\ncentre = [1.0, 0.0]\nkappa = 2.0',
    "time": "T = 0.2",
}


def toml(**sections: str) -> str:
    """GOOD with some sections replaced (``None`` removes a section)."""
    merged = {**GOOD, **sections}
    return "\n".join(f"[{k}]\n{v}\n" for k, v in merged.items() if v is not None)


def expr(source: str) -> str:
    return toml(initial=f'kind = "expression"\nexpression = {toml_value(source)}')


DEEP = "-" * 500 + "x"
ESCAPE = "().__class__.__bases__[0].__subclasses__()"
#: (id, config text or None, command (CONFIG stands for the file), exit code, phrase)
ROWS = [
    # 1. the expression language: escapes and unbounded work are refused by name
    ("lambda", expr("(lambda: 1)() + 0*x"), "check", 2, "lambda"),
    ("class walk", expr(ESCAPE), "check", 2, "attribute access"),
    ("__import__", expr("__import__('os').system('echo pwned')"), "check", 2, "__import__"),
    ("getattr", expr("getattr(x, 'real')"), "check", 2, "getattr"),
    ("string constant", expr("'abc'"), "check", 2, "(str)"),
    ("9**9**9", expr("9**9**9 + x"), "check", 2, "9**9**9"),
    ("huge nesting", expr(DEEP), "check", 2, "nested too deeply"),
    ("nested parens", expr("(" * 300 + "x" + ")" * 300), "check", 2, "nested parentheses"),
    ("attribute on number", expr("(1).real + x"), "check", 2, "attribute access"),
    ("complex constant", expr("1j + x*0"), "check", 2, "(complex)"),
    ("too long", expr("+".join(["1"] * 1200)), "check", 2, "characters long"),
    ("keyword argument", expr("clip(x, a_min=0, a_max=1)"), "check", 2, "keyword"),
    ("wrong arity", expr("sin(x, y)"), "check", 2, "sin takes 1 argument"),
    ("negative density", expr("x - 2"), "check", 2, "negative"),
    ("NaN density", expr("sqrt(x)"), "check", 2, "NaN"),
    ("zero density", expr("0*x"), "check", 2, "zero"),
    (
        "escape in a mixture",
        toml(
            initial='kind = "mixture"\ncomponents = [{ kind = '
            '"expression", expression = "x.__class__" }]'
        ),
        "check",
        2,
        "initial.components[0].expression",
    ),
    # 2. keys silently ignored or coerced
    (
        "dV with kind random",
        toml(
            perturbation='kind = "random"\neta = 0.1\nlayer_length = 0.1\n'
            "dV = [[0.0, 0.0], [0.0, 1.0]]"
        ),
        "check",
        2,
        "['dV']",
    ),
    (
        "eta with kind tied",
        toml(perturbation='kind = "tied"\ndV = [[0.0, 0.0], [0.0, 1.0]]\neta = 0.1'),
        "check",
        2,
        "['eta'] do not apply",
    ),
    (
        "keys of two kinds",
        toml(perturbation="dV = [[0.0, 0.0], [0.0, 1.0]]\neta = 0.1"),
        "check",
        2,
        "keys of different kinds",
    ),
    ("B without A", toml(perturbation="B = [[0.0], [1.0]]"), "check", 2, "perturbation.A"),
    (
        "project as a string",
        toml(mesh=f'file = "{MESHES / "circle_64.xdmf"}"\nproject = "false"'),
        "check",
        2,
        "mesh.project",
    ),
    ("matrix of strings", toml(model='V = [["1", "0"], ["0", "1"]]'), "check", 2, "model.V"),
    (
        "matrix of booleans",
        toml(model="Q = [[true, false], [false, true]]"),
        "check",
        2,
        "model.Q",
    ),
    (
        "centre of strings",
        toml(initial='kind = "vmf"\ncentre = ["1", "0"]\nkappa = 1.0'),
        "check",
        2,
        "initial.centre",
    ),
    ("sphere = 2 with cells", toml(mesh="sphere = 2\ncells = 32"), "check", 2, "mesh.cells"),
    (
        "file with sphere",
        toml(mesh=f'file = "{MESHES / "circle_64.xdmf"}"\nsphere = 1'),
        "check",
        2,
        "mesh.sphere",
    ),
    (
        "project on a generated mesh",
        toml(mesh="cells = 32\nproject = true"),
        "check",
        2,
        "mesh.project",
    ),
    (
        "seed as a boolean",
        toml(perturbation="eta = 0.1\nlayer_length = 0.1\nseed = true"),
        "check",
        2,
        "perturbation.seed",
    ),
    ("output flag as a string", toml(output='vtx = "yes"'), "check", 2, "output.vtx"),
    # 3. exit codes and derived quantities
    (
        "mixture component not a table",
        toml(initial='kind = "mixture"\ncomponents = [1.0]'),
        "check",
        2,
        "initial.components[0] must be a table",
    ),
    (
        "A = K^T Q overflows",
        toml(model="Q = [[1e308, 0.0], [0.0, 1e308]]\nK = [[10.0, 0.0], [0.0, 10.0]]"),
        "check",
        2,
        "model.K^T",
    ),
    (
        "V + dV overflows",
        toml(
            perturbation="dV = [[1.7e308, 0.0], [0.0, 0.0]]",
            model="V = [[1.7e308, 0.0], [0.0, 1.0]]",
        ),
        "check",
        2,
        "model.V + perturbation.dV",
    ),
    ("huge cells", toml(mesh="cells = 100000000"), "check", 2, "mesh.cells"),
    ("too many steps (T)", toml(time="T = 1e9"), "check", 2, "time.T"),
    ("too many saves", toml(time="T = 1.0\nsave_every = 1e-9"), "check", 2, "time.save_every"),
    (
        "too many layers",
        toml(perturbation="eta = 0.1\nlayer_length = 1e-9"),
        "check",
        2,
        "perturbation.layer_length",
    ),
    (
        "snapshots too big",
        toml(mesh="cells = 1000000", time="T = 0.2\nsave_every = 0.0005"),
        "check",
        2,
        "GiB",
    ),
    (
        "validation.levels out of range",
        toml(validation="levels = [2, 64]"),
        "check",
        2,
        "validation.levels [2]",
    ),
    (
        "validation.levels with a mesh file",
        toml(mesh=f'file = "{MESHES / "circle_64.xdmf"}"', validation="levels = [16]"),
        "check",
        2,
        "validation.levels",
    ),
    (
        "mesh file of the wrong sphere",
        toml(mesh=f'file = "{MESHES / "icosphere_0.xdmf"}"'),
        "check",
        2,
        "mesh.file is a mesh of S^2",
    ),
    ("run refuses what check refuses", toml(time="T = 1e9"), "run", 2, "time.T"),
    ("validate refuses too", expr("(lambda: 1)()"), "validate", 2, "lambda"),
    ("unknown key", toml(time="T = 1.0\ndt = 0.1"), "check", 2, "unknown key"),
    ("not TOML", "[mesh\nsphere = 1", "check", 2, "not valid TOML"),
    ("missing config file", None, "check", 2, "does not exist"),
    ("run without --output", GOOD["time"], "run-no-output", 2, "--output"),
]
ARGV = {
    "check": ["config", "--check", "CONFIG"],
    "run": ["run", "CONFIG", "--output", "OUT", "--no-progress"],
    "validate": ["validate", "CONFIG", "--output", "OUT", "--no-progress"],
    "run-no-output": ["run", "CONFIG"],
}
SUBPROCESS = {"class walk", "9**9**9", "A = K^T Q overflows", "mixture component not a table"}


def argv(tmp_path: Path, text: str | None, cmd: str) -> list[str]:
    cfg = tmp_path / "c.toml"
    if text is not None:
        cfg.write_text(text)
    subs = {"CONFIG": str(cfg), "OUT": str(tmp_path / "out")}
    return [subs.get(a, a) for a in ARGV[cmd]]


def test_table_is_large_and_good_config_passes(tmp_path, capsys):
    assert len(ROWS) >= 25 and len({r[0] for r in ROWS}) == len(ROWS)
    assert main(argv(tmp_path, toml(), "check")) == 0
    assert "valid" in capsys.readouterr().out


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(tmp_path, capsys, row):
    _, text, cmd, code, phrase = row
    try:
        rc = main(argv(tmp_path, text, cmd))
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code, err
    assert phrase in err, err
    assert not (tmp_path / "out").exists() or cmd != "check"


@pytest.mark.parametrize("name", sorted(SUBPROCESS))
def test_bad_input_from_the_shell(tmp_path, run, name):
    _, text, cmd, code, phrase = next(r for r in ROWS if r[0] == name)
    p = run(["-m", "solver", *argv(tmp_path, text, cmd)])
    assert p.returncode == code and phrase in p.stderr, p.stderr
    assert "pwned" not in p.stdout + p.stderr
