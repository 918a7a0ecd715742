"""`falco models ...`: list, fetch, verify and locate the weight files of the model store.

Thin: every action is one call into ``anon_core.model_store``; this module only formats. Wire it into the
`falco` parser with ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `models` (with list / fetch / verify / path) to the `falco` sub-commands."""
    models = subparsers.add_parser(
        "models", help="list, fetch and verify weight files in the model store ($FALCO_MODELS or ~/.cache/falco/models)"
    )
    sub = models.add_subparsers(dest="models_command", required=True)

    p = sub.add_parser("list", help="every known weight file: profiles, size, sha256, source, present/verified")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_list)

    p = sub.add_parser("fetch", help="download (resumable), verify and unpack weight files")
    p.add_argument("names", nargs="*", metavar="NAME", help="entry or file names from `falco models list`")
    p.add_argument("--profile", default=None, help="fetch everything a profile needs (e.g. ffhq1024, evaluation)")
    p.add_argument("--url", default=None, help="download from this URL instead of the registry's (one NAME only)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_fetch)

    p = sub.add_parser("verify", help="re-check the sha256 of every present file (or of NAME)")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help="an entry or file name from `falco models list` (default: every present file)")
    p.set_defaults(run=_run_verify)

    p = sub.add_parser("path", help="print where a weight file lives (exit 1 if it is absent)")
    p.add_argument("name", metavar="NAME", help="an entry or file name from `falco models list`")
    p.set_defaults(run=_run_path)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def profile_summary(rows: list[dict]) -> list[str]:
    """One line per profile that needs weight files: ready, or which entries are missing and the command to fetch
    them."""
    profiles = list(dict.fromkeys(p for row in rows for p in row["profiles"]))
    width = max([len(p) for p in profiles] + [len("all (tiny too)")])
    lines = []
    for profile in profiles:
        needed = [row for row in rows if profile in row["profiles"]]
        missing = [row["name"] for row in needed if not row["present"]]
        state = f"ready ({len(needed)} entries present)" if not missing else \
            f"{len(missing)} of {len(needed)} entries missing ({', '.join(missing)}): " \
            f"`falco models fetch --profile {profile}`"
        label = "all (tiny too)" if profile == "all" else profile
        lines.append(f"  {label:<{width}}  {state}")
    return lines


def _run_list(args: argparse.Namespace) -> int:
    from anon_core import model_store

    rows = [model_store.describe(entry) for entry in model_store.REGISTRY]
    if args.json:
        print(json.dumps({"store": str(model_store.store_dir()), "entries": rows}, indent=1))
        return 0
    print(f"model store: {model_store.store_dir()}  (${model_store.STORE_ENV} picks another folder)")
    for line in profile_summary(rows):
        print(line)
    for row in rows:
        state = "verified" if row["verified"] else "present" if row["present"] else "missing"
        if not row["present"] and any(f["state"] != "missing" for f in row["files"]):
            state = "partial"
        print(f"\n{row['name']}  [{', '.join(row['profiles']) or '-'}]  {state}")
        recorded = row["files"][0]["sha256"] if len(row["files"]) == 1 else None  # the TOFU record, if any
        if row["sha256"]:
            digest = row["sha256"]
        elif recorded and recorded != row["sha256_prefix"]:
            digest = f"{recorded} (recorded on first fetch; not published)"
        elif row["sha256_prefix"]:
            digest = f"{row['sha256_prefix']}... ({row['sha256_note']})"
        else:
            digest = row["sha256_note"]
        size = row["size"] or (row["files"][0]["size"] if len(row["files"]) == 1 else None)
        origin = row["url"] or (f"package {row['package']}" if row["package"] else f"by hand from {row['page']}")
        print(f"  file     {row['filename']}" + (f"  ({_size(size)})" if size else ""))
        print(f"  sha256   {digest}")
        print(f"  from     {origin}")
        print(f"  about    {row['source']}")
        for f in row["files"]:
            size = f"  {_size(f['size'])}" if f["size"] is not None else ""
            print(f"    {f['state']:<9} {f['name']:<24} {f['path']}{size}")
    return 0


def _run_fetch(args: argparse.Namespace) -> int:
    from anon_core import model_store
    from anon_core.errors import FalcoError

    names = list(args.names)
    if args.profile:
        from anon_core.profiles import PROFILES

        known = sorted({*PROFILES, *model_store.weight_profiles()})
        if args.profile not in known:  # a typo fetched only the files every profile shares, and said done
            raise FalcoError(f"unknown profile {args.profile!r}; known: {', '.join(known)}")
        names += [n for n in model_store.profile_weights(args.profile) if n not in names]
    if not names:
        raise FalcoError("name at least one weight file (see `falco models list`) or pass --profile PROFILE")
    if args.url and len(names) != 1:
        raise FalcoError(f"--url needs exactly one NAME, got {len(names)}: {', '.join(names)}")
    done: set[str] = set()
    failed: list[str] = []
    for name in names:
        entry = model_store.get_entry(name)
        key = name if entry.package else entry.name  # one download serves every member of an archive
        if key in done:
            continue
        done.add(key)
        try:
            path = model_store.fetch(name, url=args.url, progress=not args.quiet)
        except FalcoError as err:
            failed.append(str(err))  # each message names its file
            continue
        print(f"{name}: {path}", flush=True)
    if len(failed) == 1 and len(done) == 1:
        raise FalcoError(failed[0])
    if failed:
        ready = len(done) - len(failed)  # shipped in a package, already in the store, or fetched now: printed above
        raise FalcoError(f"{len(failed)} of {len(done)} failed ({ready} in place, listed above):\n" + "\n".join(failed))
    return 0


def _run_verify(args: argparse.Namespace) -> int:
    from anon_core import model_store

    results = model_store.verify(args.name)
    for r in results:
        digest = f"  {r.actual}" if r.actual else ""
        print(f"{r.status:<10} {r.name:<28} {r.path}{digest}")
        if not r.ok and r.detail:
            print(f"           {r.detail}")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "unverified", "missing", "mismatch")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) if results else "no weight files present")
    failed = counts["mismatch"] or (args.name is not None and counts["missing"])
    return 1 if failed else 0


def _run_path(args: argparse.Namespace) -> int:
    from anon_core import model_store

    path = model_store.model_path(args.name)
    if not path.is_file():
        print(f"falco: {args.name} is not present; it belongs at {path}. "
              f"Get it with: {model_store.how_to_get(args.name)}", file=sys.stderr)
        return 1
    print(path)
    return 0
