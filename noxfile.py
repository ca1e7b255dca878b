"""Sessions: tests, lint, types, quickstart, docs, bench (not run by default)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types", "quickstart"]
nox.options.reuse_existing_virtualenvs = True
INSTALL = ("-c", "constraints.txt", "-e")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole suite, servers included."""
    session.install(*INSTALL, ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "aisio", "tests", "examples", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    session.install(*INSTALL, ".[dev]")
    session.run("mypy", "aisio")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, built in strict mode: any warning fails (site/ holds the result)."""
    session.install(*INSTALL, ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def quickstart(session: nox.Session) -> None:
    """The README's first command."""
    session.install(*INSTALL, ".[torch]")
    session.run("python", "examples/quickstart.py")


@nox.session
def bench(session: nox.Session) -> None:
    """aisio against its peers: `nox -s bench` (quick, a few minutes) or `nox -s bench -- --full`.

    Results go to docs/benchmarks/ (full) or docs/benchmarks/quick/. Needs nginx (Debian's
    package), installed here if missing.
    """
    import shutil

    if not (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")):
        session.log("nginx is missing: trying apt-get install -y nginx")
        try:
            session.run("apt-get", "install", "-y", "nginx", external=True)
        except Exception:
            session.error("could not install nginx; run `apt-get install -y nginx` (as root) "
                          "and try again")
    session.install(*INSTALL, ".[bench]")
    session.run("python", "-m", "tests.benchmarks.run", *(session.posargs or ["--quick"]))


@nox.session
def reliability(session: nox.Session) -> None:
    """The long reliability runs of docs/reliability.md (not run by default, ~5 minutes).

    10,000 randomly faulted reads per backend and 20 GiB streamed through four DataLoader
    workers; the default test run has their shorter variants. Figures are printed (-s).
    """
    session.install(*INSTALL, ".[test]")
    session.run("python", "-m", "pytest", "-m", "reliability", "-s", "tests/test_faults.py",
                "tests/test_reliability.py", *session.posargs)
