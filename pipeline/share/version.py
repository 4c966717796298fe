"""Bundle versions: semantic-version bumps and the ``changelog`` entry ``pack`` requires for each version."""

from __future__ import annotations

import re

from pipeline.share.report import ShareError

__all__ = ["BUMPS", "bump_version"]

BUMPS = ("patch", "minor", "major")
_SEMVER = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def bump_version(version: str, part: str) -> str:
    """``bump_version("0.1.9", "minor") == "0.2.0"``."""
    m = _SEMVER.fullmatch(version)
    if not m or part not in BUMPS:
        raise ShareError(f"cannot bump {version!r} by {part!r}: expected MAJOR.MINOR.PATCH and one of {BUMPS}.")
    major, minor, patch = map(int, m.groups())
    return {"major": f"{major + 1}.0.0", "minor": f"{major}.{minor + 1}.0", "patch": f"{major}.{minor}.{patch + 1}"}[
        part
    ]


def update_changelog(meta: dict, bump: str | None, notes: str | None) -> str:
    version, changelog = str(meta.get("version", "")), meta.get("changelog") or {}
    if not _SEMVER.fullmatch(version) or not isinstance(changelog, dict):
        raise ShareError(
            f"configs/metadata.json: 'version' must be MAJOR.MINOR.PATCH and 'changelog' a dict; got {version!r}."
        )
    if bump:
        if not notes:
            raise ShareError(f"--bump {bump} needs --notes 'what changed' for the changelog entry of the new version.")
        version = bump_version(version, bump)
        meta["version"], meta["changelog"] = version, {version: notes, **changelog}
    elif version not in changelog:
        if not notes:
            raise ShareError(
                f"configs/metadata.json: 'changelog' has no entry for version {version!r}. "
                f"Pass --bump patch --notes '...' (new version) or --notes '...' (describe {version})."
            )
        meta["changelog"] = {version: notes, **changelog}
    return version
