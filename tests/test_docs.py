"""
The docs say what the code does: every config key the reader accepts and
every flag is in docs/configuration.md, every error cause has a row in
docs/troubleshooting.md, the generated tables are the code's, and every
YAML example passes C{check-config}.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from easymesh.__main__ import main as easymeshMain
from easymesh.config.files import fileSections
from easymesh.config.settings import SETTINGS
from easymesh.doctables import TABLES, main as doctablesMain, shownTable, withTable, withTables
from easymesh.errors import CAUSE_TABLE
from easymesh.tls.certs import main as certsMain

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"

#: Where each generated table lives.
TABLE_PAGES = {
    "causes": TROUBLESHOOTING,
    "metrics": DOCS / "operations.md",
    "settings": CONFIGURATION,
}


def markdownFiles() -> List[Path]:
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md"]
    pages += [ROOT / "contrib" / "systemd" / "README.md"]
    return pages + sorted(DOCS.glob("*.md"))


def tableAfter(text: str, marker: str) -> List[List[str]]:
    """
    The rows (cells, without the header and rule) of the first Markdown
    table after C{marker} in C{text}.
    """
    assert text.count(marker) == 1, f"{marker!r} is not in the page exactly once"
    lines = text.split(marker, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    return rows


def codeNames(cell: str) -> Set[str]:
    """
    The names in backticks in a table cell.
    """
    return set(re.findall(r"`([^`]+)`", cell))


def fencedBlocks(text: str, language: str) -> Iterator[str]:
    for match in re.finditer(rf"^```{language}\n(.*?)^```$", text, re.M | re.S):
        yield match.group(1)


class TestConfigurationReference:
    text = CONFIGURATION.read_text(encoding="utf-8")

    @pytest.mark.parametrize("section", sorted(fileSections()))
    def test_everyKeyDocumented(self, section: str) -> None:
        """
        Each part of a config file has a table of exactly the keys the
        reader accepts there; the top level's keys are the settings
        table's and those of its own table.
        """
        accepted = fileSections()[section]
        marker = f"<!-- keys: {section or 'top-level'} -->"
        documented: Set[str] = set()
        for row in tableAfter(self.text, marker):
            documented |= codeNames(row[0])
        if section == "":
            for row in tableAfter(self.text, "<!-- settings:begin -->"):
                documented |= codeNames(row[0])
        assert sorted(accepted - documented) == [], f"undocumented keys of {section or 'the top level'}"
        assert sorted(documented - accepted) == [], f"documented keys {section or 'the top level'} does not accept"

    def test_everyFlagDocumented(self) -> None:
        """
        Every flag C{twistd easymesh --help} prints is in a table of the
        configuration page.
        """
        result = subprocess.run(
            [sys.executable, "-m", "twisted", "easymesh", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert result.returncode == 0, result.stderr
        flags = set(re.findall(r"^\s+(?:(-\w), )?(--[\w-]+)", result.stdout, re.M))
        names = {name for pair in flags for name in pair if name}
        assert {"--config", "-c", "--peer", "--help"} <= names
        tableCells = {
            name
            for line in self.text.splitlines()
            if line.startswith("|")
            for name in re.findall(r"`(--?[\w-]+)", line)
        }
        assert sorted(names - tableCells) == []

    def test_settingsAreFlags(self) -> None:
        """
        The settings table has a row per setting, each with its flag.
        """
        rows = tableAfter(self.text, "<!-- settings:begin -->")
        assert [row[0] for row in rows] == [f"`{s.name}`" for s in SETTINGS]
        assert all(row[1].startswith(f"`--{s.name}`") for row, s in zip(rows, SETTINGS))


class TestTroubleshooting:
    text = TROUBLESHOOTING.read_text(encoding="utf-8")

    def test_everyCauseHasARow(self) -> None:
        """
        The page's advice table has a row for every cause, and none for a
        cause that does not exist.
        """
        rows = tableAfter(self.text, "## What to check, cause by cause")
        documented = [row[0].strip("`") for row in rows]
        assert documented == [cause.name for cause in CAUSE_TABLE]


class TestGeneratedTables:
    @pytest.mark.parametrize("name", sorted(TABLES))
    def test_tableIsTheCodes(self, name: str) -> None:
        """
        Each generated table is on its page and is what the code makes; if
        not, the message says how to make it again.
        """
        page = TABLE_PAGES[name]
        shown = shownTable(page.read_text(encoding="utf-8"), name)
        assert shown is not None, f"{page.name} has no {name} table"
        assert shown == TABLES[name](), (
            f"{page.relative_to(ROOT)}'s {name} table differs from the code; "
            f"rewrite it with: python -m easymesh.doctables {page.relative_to(ROOT)}"
        )

    def test_tablesAreNowhereElse(self) -> None:
        """
        A generated table is kept on one page only.
        """
        for path in markdownFiles():
            for name in TABLES:
                if TABLE_PAGES[name] != path:
                    assert shownTable(path.read_text(encoding="utf-8"), name) is None, (name, path)

    def test_withTable(self) -> None:
        """
        Rewriting keeps everything around the comments, and needs them.
        """
        text = "before\n<!-- metrics:begin -->\n| old |\n<!-- metrics:end -->\nafter\n"
        assert withTable(text, "metrics", "| new |\n") == (
            "before\n<!-- metrics:begin -->\n| new |\n<!-- metrics:end -->\nafter\n"
        )
        assert withTables(text) == withTable(text, "metrics", TABLES["metrics"]())
        assert withTables("no tables\n") == "no tables\n"
        with pytest.raises(ValueError):
            withTable("no table here\n", "metrics", "| new |\n")

    def test_mainChecksAndRewrites(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """
        C{python -m easymesh.doctables --check} exits 1 for a stale table
        and leaves the file; without C{--check} it rewrites the table.
        """
        page = tmp_path / "page.md"
        page.write_text("<!-- settings:begin -->\n| old |\n<!-- settings:end -->\n")
        assert doctablesMain(["--check", str(page)]) == 1
        assert "| old |" in page.read_text()
        assert doctablesMain([str(page)]) == 0
        assert shownTable(page.read_text(), "settings") == TABLES["settings"]()
        assert doctablesMain(["--check", str(page)]) == 0
        assert doctablesMain([]) == 2


def yamlExamples() -> List[Tuple[str, str]]:
    """
    Every example config: the files under examples/, and each YAML block
    of the Markdown pages, as (where, text).
    """
    found = [
        (str(path.relative_to(ROOT)), path.read_text(encoding="utf-8"))
        for path in sorted((ROOT / "examples").rglob("*.yaml"))
    ]
    for page in markdownFiles():
        for index, block in enumerate(fencedBlocks(page.read_text(encoding="utf-8"), "yaml")):
            found.append((f"{page.relative_to(ROOT)} block {index + 1}", block))
    return found


@pytest.fixture(scope="module")
def certsDirectory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    A directory with the certificates the docs' examples name under
    C{certs/}, made as the docs make them.
    """
    directory = tmp_path_factory.mktemp("docs")
    identities = ["orders", "web"]
    argv = [str(directory / "certs")]
    for name in identities:
        argv += ["--identity", f"spiffe://example.org/ns/default/sa/{name}"]
    assert certsMain(argv, out=io.StringIO()) == 0
    return directory


@pytest.mark.parametrize("where, text", yamlExamples(), ids=[w for w, _ in yamlExamples()])
def test_exampleConfigIsValid(
    where: str,
    text: str,
    certsDirectory: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """
    Each example passes C{python -m easymesh check-config}, run from
    another directory than the file's.
    """
    path = certsDirectory / (re.sub(r"\W+", "-", where) + ".yaml")
    path.write_text(text, encoding="utf-8")
    monkeypatch.chdir(certsDirectory)
    status = easymeshMain(["check-config", path.name])
    assert status == 0, capsys.readouterr().err
    assert ": valid (" in capsys.readouterr().out


def test_examplesFound() -> None:
    """
    The examples include the sample file and blocks of the docs.
    """
    places = [where for where, _ in yamlExamples()]
    assert "examples/easymesh.yaml" in places
    assert any(p.startswith("docs/configuration.md") for p in places)
    assert any(p.startswith("README.md") for p in places)


def test_sampleIsValidFromAnywhere(tmp_path: Path) -> None:
    """
    The shipped sample passes C{check-config} as a real command from
    another directory, given by its absolute path.
    """
    sample = ROOT / "examples" / "easymesh.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "easymesh", "check-config", str(sample)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{sample}: valid (")


def test_readmeIsShort() -> None:
    """
    The README stays an introduction; references go under docs/.
    """
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 350


def anchors(text: str) -> Set[str]:
    """
    The anchors GitHub makes of a page's headings.
    """
    found = set()
    for heading in re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```$", "", text, flags=re.M | re.S), re.M):
        found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def test_relativeLinksResolve() -> None:
    """
    Every relative link of the Markdown pages names a file that exists,
    and a heading of it if it names one.
    """
    broken: Dict[str, List[str]] = {}
    for page in markdownFiles():
        text = page.read_text(encoding="utf-8")
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text):
            if "://" in target:
                continue
            linked = (page.parent / target) if target else page
            if not linked.exists():
                broken.setdefault(str(page.relative_to(ROOT)), []).append(target)
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
                broken.setdefault(str(page.relative_to(ROOT)), []).append(f"{target}#{anchor}")
    assert broken == {}


def test_causesUpdate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """
    C{python -m easymesh causes --update FILE} rewrites the cause table of
    any page that has one, and refuses a page without one.
    """
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- causes:begin -->\n| old |\n<!-- causes:end -->\nafter\n")
    assert easymeshMain(["causes", "--update", str(page)]) == 0
    assert page.read_text() == withTable(page.read_text(), "causes", TABLES["causes"]())
    assert page.read_text().startswith("before\n") and page.read_text().endswith("after\n")
    page.write_text("no table here\n")
    assert easymeshMain(["causes", "--update", str(page)]) == 1
