"""Small facts a new user relies on: distinct document titles, a changelog, a licence file."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _title(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# "), f"{path.name} does not start with a '# ' title"
    return first[2:].strip()


def test_every_document_has_its_own_title() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    titles = {p.name: _title(p) for p in docs}
    # Distinct in their first words too: two titles both starting "Operations:" read as one.
    heads = [re.split(r"[:(]", t)[0].strip().lower() for t in titles.values()]
    assert len(set(heads)) == len(heads), titles


def test_changelog_names_the_current_version() -> None:
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version.group(1)}]" in changelog
    assert "## [Unreleased]" in changelog


def test_package_docstring_has_no_dangling_line() -> None:
    import langchain_contextharbor

    doc = (langchain_contextharbor.__doc__ or "").strip()
    assert doc and not doc.endswith(":"), doc


def test_cli_doc_check_json_example_has_exactly_the_keys_the_code_prints() -> None:
    import json

    from langchain_contextharbor import BackendHealth

    text = (ROOT / "docs" / "cli.md").read_text()
    example = json.loads(re.findall(r"```json\n(.*?)```", text, re.S)[0])
    keys = set(BackendHealth("gpu", "http://127.0.0.1:11434", "gpu", True, 1.0).as_dict())
    for name, entry in example.items():
        assert set(entry) == keys, (name, set(entry) ^ keys)
    key_table = text[text.index("| key | meaning |") :].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", key_table, re.M))
    # url, is_gpu, version and kind are explained in the prose above the example.
    assert keys - {"url", "is_gpu", "version", "kind"} <= documented, keys - documented


def test_local_links_and_images_in_the_docs_exist() -> None:
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve()
            assert path.exists(), f"{doc.name}: link to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{doc.name}: no heading for {target}"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out
