#!/usr/bin/env python3
"""Recomputes a livestock draw from what the server revealed, with nothing but the standard
library: checks that the seed is the one committed at the deal's creation, that the order is
the seed's, and that the winners are the first entries of that order the units fit (each whole).

    python3 scripts/verify-draw.py http://127.0.0.1:8080 DEAL_ID      # fetches the draw
    python3 scripts/verify-draw.py draw.json                            # a saved answer

Exit status 0 if everything checks, 1 with the first difference otherwise.
"""
import hashlib
import json
import sys
import urllib.request

DOMAIN = b"livestock-draw-v1"


def load(args):
    if len(args) == 2:
        url = f"{args[0].rstrip('/')}/v1/deals/{args[1]}/draw"
        with urllib.request.urlopen(url) as answer:
            return json.load(answer)
    with open(args[0]) as f:
        return json.load(f)


def verify(draw):
    if draw["algorithm"] != "sha256-rank-v1":
        return f"unknown algorithm {draw['algorithm']}"
    if draw["state"] != "drawn":
        return f"not drawn yet (state {draw['state']})"
    seed = bytes.fromhex(draw["seed"])
    if hashlib.sha256(seed).hexdigest() != draw["commitment"]:
        return "the seed is not the committed one"
    entrants = draw["entrants"]
    keys = [
        (hashlib.sha256(DOMAIN + seed + i.to_bytes(8, "big") + e["user_id"].encode()).digest(), i)
        for i, e in enumerate(entrants)
    ]
    order = [entrants[i]["entry_id"] for _, i in sorted(keys)]
    if order != draw["order"]:
        return "the order is not the seed's"
    units, winners = draw["units"], []
    for entry_id in order:
        qty = next(e["qty"] for e in entrants if e["entry_id"] == entry_id)
        if qty <= units:
            units -= qty
            winners.append(entry_id)
    if winners != draw["winners"]:
        return "the winners are not the first fit of the units in the order"
    return None


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    draw = load(sys.argv[1:])
    problem = verify(draw)
    if problem:
        print(f"FAIL: {problem}")
        return 1
    print(
        f"OK: deal {draw['deal_id']}: {len(draw['entrants'])} entries, {draw['units']} units, "
        f"{len(draw['winners'])} winners; seed matches commitment {draw['commitment'][:16]}..."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
