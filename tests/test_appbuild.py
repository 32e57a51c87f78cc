"""The application as deployed: compiled with mpy-cross, and it still runs on the VM."""

import pytest

from fleet.appbuild import SOURCE_ONLY, build_app
from fleet.errors import BUILD, FleetError
from vboard.vm import run_source


def test_modules_compile_and_the_compiled_protocol_stack_runs(tmp_path):
    files = build_app()
    assert set(SOURCE_ONLY) <= set(files)
    assert "lib/oscore.mpy" in files and "lib/oscore.py" not in files
    assert all(k.endswith(".mpy") for k in files if k not in SOURCE_ONLY)
    assert all(v[:1] == b"M" for k, v in files.items() if k.endswith(".mpy"))  # mpy header
    for name, data in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    proc = run_source("import cbor, senml\nprint(senml.encode([('level', 7)]).hex())",
                      path=[".frozen", tmp_path / "lib", tmp_path])
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.strip() == b"81a200656c6576656c0207"  # [{0: "level", 2: 7}]


def test_a_module_that_does_not_compile_is_a_fleet_error_naming_it(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "main.py").write_text("import app.node\n")
    (tmp_path / "app" / "node.py").write_text("def run(:\n    pass\n")
    with pytest.raises(FleetError, match=r"the app does not compile: .*app/node\.py") as exc:
        build_app(tmp_path)
    assert exc.value.kind == BUILD
