"""Repository hygiene: CI runs the README's test command; the layout the user fixed exists."""

import ast
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import PurePosixPath

import pytest
import yaml
from conftest import MYPROJECT, REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

DOCUMENTS = [
    REPO / "README.md",
    REPO / "benchmarks" / "README.md",
    REPO / "docs" / "how_it_works.md",
    REPO / "docs" / "results.md",
    REPO / "docs" / "safety.md",
]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^(make [\w-]+)", readme, flags=re.MULTILINE)
    assert commands == ["make demo", "make test", "make test-fast"]
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert lines[-1] == "make test"


def test_fixed_layout():
    for name in [
        "Train_ResNet.py",
        "Prediction_ResNet.py",
        "Figure_merit.ipynb",
        "ClassActivationMaps.ipynb",
    ]:
        assert (MYPROJECT / name).is_file(), name
    for name in ["README.md", "requirements.txt", ".ci/run", "tests"]:
        assert (REPO / name).exists(), name


def test_requirements_are_exact_pins():
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][0-9A-Za-z.]*", line), line


@pytest.mark.slow
def test_scripts_run_from_the_root_and_from_myproject():
    # Every script and tool from the root; from myproject/ the mechanism is the same (the
    # installed package), so one script there is enough to show it. --help answers before
    # TensorFlow loads, so it prints nothing on standard error.
    scripts = sorted(p.name for p in MYPROJECT.glob("*.py"))
    assert {"Train_ResNet.py", "Prediction_ResNet.py", "Preprocess_Mammograms.py"} <= set(scripts)
    tools = sorted(p.name for p in (REPO / "tools").glob("*.py"))
    runs = [
        *[(REPO, f"myproject/{script}") for script in scripts],
        *[(REPO, f"tools/{tool}") for tool in tools],
        (MYPROJECT, "Make_Phantoms.py"),
    ]
    for cwd, path in runs:
        result = subprocess.run(
            [sys.executable, path, "--help"], cwd=cwd, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (path, cwd, result.stderr[-500:])
        assert "usage:" in result.stdout
        assert not result.stderr, (path, result.stderr[-500:])  # no TensorFlow chatter either


# Which package modules each module may import. Shared foundations at the bottom; a stage's
# module never imports another stage's module. A new module must be placed here explicitly.
# Modules of a sub-package are named by their dotted path inside breastdensity ("data.phantoms").
# "backbones" is the network contract every stage relies on (input, output, the layer to explain).
FOUNDATION = {"conventions", "files", "preprocessing", "network", "backbones"}
ALLOWED_IMPORTS = {
    "conventions": set(),  # names and paths only: everything may use it, it uses nothing
    "files": set(),
    "network": {"conventions"},
    "preprocessing": {"conventions", "files"},
    "training": FOUNDATION,  # stage 1
    "backbones": {
        "conventions",
        "network",
    },  # every network that can be trained; ResNet is network's
    "run_folder": FOUNDATION,  # stage 1: a run's model folder (fresh, resume, finished, lock)
    "inference": FOUNDATION,  # stage 2
    "predictions": FOUNDATION,
    "metrics": FOUNDATION,  # stage 3
    "cam": FOUNDATION,  # stage 4 and the explanation evaluation
    # The explanation wing: the methods, the one gradient engine, and how maps are scored.
    "explain.__init__": set(),
    "explain.attributions": FOUNDATION | {"cam"},  # the gradient attribution engine
    # one Explainer, every method (a ViT's own methods from explain.transformer)
    "explain.methods": FOUNDATION | {"cam", "explain.attributions", "explain.transformer"},
    "explain.regions": FOUNDATION,  # XRAI-style region maps
    "explain.scoring": FOUNDATION | {"cam"},  # maps against masks, fidelity, sanity, robustness
    "explain.transformer": FOUNDATION,  # a ViT's token Grad-CAM, rollout, Chefer
    "explain.comparison": FOUNDATION
    | {"cam", "explain.attributions", "explain.regions", "explain.scoring"},
    # The data wing: synthetic phantoms, and the raw DICOM form of them that tests stage 0.
    "data.__init__": set(),
    "data.phantom_model": FOUNDATION,  # image formation and the sampled ranges
    "data.phantoms": FOUNDATION | {"data.phantom_model"},  # datasets and their manifest
    "data.phantom_plots": FOUNDATION | {"data.phantoms"},  # the preview grid
    "data.raw_phantoms": FOUNDATION | {"data.phantom_model", "data.phantoms"},
    "data.mammograms": FOUNDATION,  # stage 0: reading and normalising real mammograms
    "data.label_tables": FOUNDATION,  # stage 0: the public datasets' label tables
    "baseline": FOUNDATION | {"metrics"},  # scored with the one implementation of fusion and kappa
    "__init__": set(),
    "quiet": set(),
    "notebook": {"quiet"},  # what every notebook runs first
}


PACKAGE = MYPROJECT / "breastdensity"


def module_name(path):
    """A package module's name inside breastdensity: "conventions", "data.phantoms", "__init__"."""
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts)


def package_imports(path):
    """The package modules that the module at ``path`` imports, named as ``module_name`` does.

    Relative imports resolve against the module's own sub-package (``from ..conventions``
    in data/ is "conventions"); ``from <sub-package> import name`` imports the module
    ``name`` if there is one, else the sub-package's ``__init__``.
    """
    folder = module_name(path).split(".")[:-1]  # [] at the top, ["data"] in data/
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imports = [(alias.name.split("."), []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = folder[: len(folder) - (node.level - 1)]
            module = node.module.split(".") if node.module else []
            imports = [(["breastdensity", *base, *module], [a.name for a in node.names])]
        elif isinstance(node, ast.ImportFrom):
            imports = [(node.module.split("."), [a.name for a in node.names])]
        else:
            continue
        for (top, *parts), imported in imports:
            if top != "breastdensity":
                continue
            if not PACKAGE.joinpath(*parts).is_dir():
                names.add(".".join(parts))
                continue
            modules = [n for n in imported if PACKAGE.joinpath(*parts, f"{n}.py").is_file()]
            names.update(".".join([*parts, n]) for n in modules or ["__init__"])
    return names


def test_package_dependencies_point_one_way():
    modules = sorted(PACKAGE.rglob("*.py"))
    names = {module_name(m) for m in modules}
    assert names == set(ALLOWED_IMPORTS), "place new modules in ALLOWED_IMPORTS"
    for module in modules:
        imported = package_imports(module)
        assert imported <= ALLOWED_IMPORTS[module_name(module)], (module_name(module), imported)


def test_package_imports_are_at_module_top():
    for module in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(module.read_text())
        nested = [
            node.lineno
            for function in ast.walk(tree)
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
            for node in ast.walk(function)
            if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        assert not nested, f"{module.name}: imports inside functions at lines {nested}"


def test_no_opencv_api_that_opencv_4_lacks():
    # Colab ships OpenCV 4.x; the logging submodule of cv2's utils exists only in 5.x.
    files = [*MYPROJECT.rglob("*.py"), *MYPROJECT.glob("*.ipynb"), *(REPO / "tools").glob("*.py")]
    missing_in_4x = "cv2." + "utils"  # spelled in two parts so that this file does not match itself
    offenders = [f.name for f in files if missing_in_4x in f.read_text()]
    assert not offenders


def test_the_package_requires_what_requirements_pin():
    # pyproject.toml's loose dependencies (what Colab's %pip install brings) must accept the
    # exact versions requirements.txt installs and the tests run with.
    pins = {
        canonicalize_name(name): Version(version)
        for name, version in (
            line.split("==")
            for line in (REPO / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")
        )
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dependency in map(Requirement, project["dependencies"]):
        name = canonicalize_name(dependency.name)
        assert name in pins, f"{name}: a dependency of the package that requirements.txt lacks"
        assert pins[name] in dependency.specifier, (str(dependency), str(pins[name]))
    # Colab's own TensorFlow and OpenCV wheel stay: the package must not ask for another
    for name in ("tensorflow", "opencv-python", "opencv-python-headless"):
        assert name not in {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}


def python_sources():
    """The repository's tracked and new Python files and notebooks (not .venv, not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py", "*.ipynb"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def test_no_import_path_edits_and_no_late_import_markers():
    # The package is installed (pip install -e .): nothing edits the import path, and so
    # no import needs to come after code. Spelled in parts so this file does not match itself.
    edit = re.compile(r"sys\.path\s*(\.(insert|append|extend)\b|\[|[+]?=)")
    marker = "noqa: " + "E402"
    offenders = [
        str(path.relative_to(REPO))
        for path in python_sources()
        if edit.search(path.read_text()) or marker in path.read_text()
    ]
    assert not offenders


def shell_commands(markdown):
    """Each command of the markdown's ```bash blocks, continuation lines joined."""
    blocks = re.findall(r"^ *```bash\n(.*?)^ *```", markdown, flags=re.MULTILINE | re.DOTALL)
    for block in blocks:
        yield from re.sub(r"\\\n\s*", " ", block).splitlines()


def papermill_runs(markdown):
    """(notebook, output, parameter names, folders made by mkdir -p) of each papermill command."""
    made = set()  # by this command or an earlier one of the document (a chained run)
    for line in shell_commands(markdown):
        tokens = shlex.split(line, comments=True)
        if tokens[:2] == ["mkdir", "-p"]:
            made |= set(tokens[2 : tokens.index("&&") if "&&" in tokens else None])
        if "papermill" not in line:
            continue
        rest = tokens[tokens.index("papermill") + 1 :]
        notebook, output, options = rest[0], rest[1], rest[2:]
        names = []
        while options:
            flag = options.pop(0)
            if flag in ("-p", "-r"):
                names.append(options.pop(0))
                options.pop(0)
            elif flag == "-y":
                names.extend(yaml.safe_load(options.pop(0)))
            else:
                raise AssertionError(f"unexpected papermill option {flag!r} in: {line}")
        yield notebook, output, names, set(made)


def notebook_parameters(path):
    """Names assigned in the notebook's cell tagged parameters."""
    cells = json.loads(path.read_text())["cells"]
    (source,) = [
        "".join(c["source"]) for c in cells if "parameters" in c["metadata"].get("tags", [])
    ]
    return {
        target.id
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        for target in node.targets
    }


def test_every_notebook_has_a_papermill_command_with_its_own_parameters():
    notebooks = {path.name: notebook_parameters(path) for path in MYPROJECT.glob("*.ipynb")}
    seen = set()
    for document in DOCUMENTS:
        for notebook, output, names, made in papermill_runs(document.read_text()):
            name = PurePosixPath(notebook).name
            assert name in notebooks, (document.name, notebook)
            seen.add(name)
            unknown = set(names) - notebooks[name]
            assert not unknown, f"{document.name}: {name} has no parameter {sorted(unknown)}"
            # papermill does not create the executed copy's folder: the command must
            folder = str(PurePosixPath(output).parent)
            assert folder in made | {"."}, f"{document.name}: mkdir -p {folder} && ... {output}"
    assert seen == set(notebooks), f"no papermill command for {sorted(set(notebooks) - seen)}"


def heading_anchors(markdown):
    """GitHub's anchors of the markdown's headings (duplicates get -1, -2, ...)."""
    anchors = set()
    markdown = re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    for heading in re.findall(r"^#+ +(.+?) *$", markdown, flags=re.MULTILINE):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        candidate, count = anchor, 0
        while candidate in anchors:
            count += 1
            candidate = f"{anchor}-{count}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_links_point_at_files_and_headings_that_exist(document):
    markdown = document.read_text()
    without_code = re.sub(r"^ *```.*?^ *```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", without_code))
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (document.parent / target).resolve() if target else document
        assert path.exists(), f"{document.name}: link to missing {target}"
        if anchor:
            assert anchor in heading_anchors(path.read_text()), f"{document.name}: #{anchor}"
