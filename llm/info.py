"""``slabopt info FOLDER``: what a compressed folder holds, whether it is finished and intact.

Read from the folder's manifest (written by ``compress``) and the files themselves: the method and
its settings, the bits per weight the compressed linear layers take on disk, the sizes (linear
layers, the rest, the whole folder, and the source checkpoint when it is still where it was), the
source model and its hashes, the calibration, how far the run got, and whether every file still
has the SHA-256 the manifest records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .checkpoint import MANIFEST, read_manifest, verify_files
from .errors import UserError


def folder_info(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """The facts of a slabopt folder (module docstring) as a JSON-ready dict; ``UserError`` when
    ``folder`` is not one."""
    folder = Path(folder)
    man = read_manifest(folder)
    layers = man.get("layers", [])
    weights = sum(e["shape"][0] * e["shape"][1] for e in layers)
    sizes = man.get("sizes") or {}
    linear = sizes.get("linear_bytes_on_disk")
    listed = [folder / name for name in man["files"]]
    info = {
        "folder": str(folder), "format": man["format"], "slabopt_version": man.get("slabopt_version"),
        "complete": bool(man.get("complete")), "blocks_done": int(man.get("next_block", 0)),
        "blocks": int(man.get("num_blocks", 0)), "architecture": man.get("architecture"),
        "settings": man.get("settings", {}), "source": man.get("source", {}),
        "layers": len(layers), "weights": weights,
        "bits_per_weight": 8 * linear / weights if linear and weights else None,
        "linear_bytes": linear, "rest_bytes": sizes.get("rest_bytes_on_disk"),
        "folder_bytes": sum(p.stat().st_size for p in [*listed, folder / MANIFEST] if p.is_file()),
        "source_bytes": _source_bytes(man.get("source", {})),
        "compress_seconds": man.get("compress_seconds"),
    }
    info["verified"], info["problem"] = _verify(folder, man) if verify else (None, None)
    return info


def _source_bytes(source: dict) -> int | None:
    """Bytes of the source checkpoint's hashed files, when they are all still there."""
    path = source.get("path")
    names = list(source.get("files", {}))
    if not path or not names or not all((Path(path) / n).is_file() for n in names):
        return None
    return sum((Path(path) / n).stat().st_size for n in names)


def _verify(folder: Path, man: dict) -> tuple[bool, str | None]:
    """(True, None) when every finished file has its recorded SHA-256, else (False, what is wrong)."""
    names = [n for n, digest in man["files"].items() if digest is not None]
    try:
        verify_files(folder, man, names)
    except UserError as exc:
        return False, str(exc)
    return True, None


def describe(info: dict[str, Any]) -> str:
    """The lines ``slabopt info`` prints."""
    st = info["settings"]
    budget = (f"{st['bits']} bits per weight asked" if st.get("bits") is not None
              else f"ratio {st.get('ratio')}")
    lines = [f"{info['folder']}: slabopt {info['format']} folder "
             f"(written by slabopt {info['slabopt_version']})"]
    if info["complete"]:
        lines.append(f"  state: complete ({info['blocks']} blocks)")
    else:
        lines.append(f"  state: unfinished: {info['blocks_done']} of {info['blocks']} blocks done; "
                     "continue with the same `slabopt compress` command and --resume")
    options = ", ".join(f"{k}={v}" for k, v in st.get("options", {}).items())
    lines.append(f"  method: {st.get('method')} ({st.get('solver')}), {budget}, rank {st.get('rank')}, "
                 f"pattern {st.get('pattern')}, positions {st.get('positions')}, codes of S "
                 f"{st.get('sparse_bits')}{', ' + options if options else ''}")
    if info["bits_per_weight"] is not None:
        lines.append(f"  linear layers: {info['layers']} layers, {info['weights']:,} weights, "
                     f"{info['bits_per_weight']:.3f} bits per weight in their files "
                     f"({info['linear_bytes']:,} bytes)")
    source = info["source"]
    src_size = "" if info["source_bytes"] is None else f"; source checkpoint {info['source_bytes']:,} bytes"
    lines.append(f"  size: whole folder {info['folder_bytes']:,} bytes (rest of the model "
                 f"{info['rest_bytes'] or 0:,}){src_size}")
    hashes = ", ".join(f"{n} {h[:12]}" for n, h in source.get("files", {}).items())
    lines.append(f"  source: {source.get('model')} at {source.get('path')} (SHA-256 {hashes})")
    lines.append(f"  calibration: {st.get('calib_tokens')} tokens in {st.get('windows')} windows of "
                 f"{st.get('seqlen')}; {st.get('text')}")
    if info["verified"] is None:
        lines.append("  files: not verified (--no-verify)")
    else:
        ok = "  files: verified (every file has the SHA-256 the manifest records)"
        lines.append(ok if info["verified"] else f"  files: {info['problem']}")
    return "\n".join(lines)
