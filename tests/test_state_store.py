"""The desired state's files (moa_bus/service/state_store.py), without a kernel: an Update of a
few links is one journal line, not the whole file; loading replays the journal and folds it
into the file; a torn last line (a crash in its write, never acked) is dropped, any other
damage refused with the file and line; a journal beside a newer file (a crash between the
two steps of folding) adds nothing; a journal without its file (a removal cut short) goes;
the journal is folded once it holds half the file's bytes."""
from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import schemas
from moa_bus.service.state_store import Held, StateError, StateStore


def _doc(n: int, loss: float = 0.0) -> schemas.Materialize:
    return schemas.decode(schemas.Materialize, msgspec.json.encode({"id": "m:1", "links": [
        {"id": f"l{i}", "endpoints": [{"vni": 100 + 2 * i, "remote": "10.0.0.1"},
                                      {"vni": 101 + 2 * i, "remote": "10.0.0.2"}],
         "emulation": {"latency": "1ms", "loss": loss}} for i in range(n)]}))


def _changed(m: schemas.Materialize, i: int, loss: float) -> schemas.Materialize:
    links = list(m.links)
    links[i] = msgspec.structs.replace(links[i], emulation=msgspec.structs.replace(
        links[i].emulation, loss=loss))
    return msgspec.structs.replace(m, links=links)


def _files(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in d.iterdir()}


def test_an_update_is_a_journal_line_and_loading_folds_it_into_the_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    m = _doc(200)
    store.put(Held(m, 1))
    whole = _files(tmp_path)["mat.m%3A1.json"]
    for gen, (i, loss) in enumerate([(3, 0.1), (150, 0.2), (3, 0.3)], start=2):
        m = _changed(m, i, loss)
        store.append(Held(m, gen), [i])
    files = _files(tmp_path)
    assert files["mat.m%3A1.json"] == whole  # the file untouched
    assert 0 < files["upd.m%3A1.jsonl"] < whole // 20  # three short lines
    held, floor = StateStore(tmp_path).load()
    assert floor == 4 and held["m:1"].generation == 4 and held["m:1"].materialize == m
    assert set(_files(tmp_path)) == {"mat.m%3A1.json"}  # folded: no journal after a load
    held, _ = StateStore(tmp_path).load()
    assert held["m:1"].materialize == m and held["m:1"].generation == 4


def test_a_torn_last_line_is_dropped_and_other_damage_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    m = _doc(50)
    store.put(Held(m, 1))
    m2 = _changed(m, 7, 0.5)
    store.append(Held(m2, 2), [7])
    journal = tmp_path / "upd.m%3A1.jsonl"
    whole = journal.read_bytes()
    journal.write_bytes(whole + whole[:25])  # a crash in the next line's write
    held, _ = StateStore(tmp_path).load()
    assert held["m:1"].materialize == m2 and held["m:1"].generation == 2

    store = StateStore(tmp_path)
    store.load()
    store.append(Held(_changed(m2, 8, 0.5), 3), [8])
    journal.write_bytes(b'{"generation": 4, "positions": [1]}\n' + journal.read_bytes())
    with pytest.raises(StateError, match=r"upd.m%3A1.jsonl is damaged at line 1"):
        StateStore(tmp_path).load()
    journal.write_bytes(b'{"generation":4,"positions":[9],"links":[]}\n')
    with pytest.raises(StateError, match="damaged at line 1"):
        StateStore(tmp_path).load()
    # a link that is not the one at that position
    other = msgspec.json.encode({"generation": 4, "positions": [9], "links": [
        msgspec.json.decode(schemas.encode(m.links[2]))]})
    journal.write_bytes(other + b"\n")
    with pytest.raises(StateError, match="not the materialization's"):
        StateStore(tmp_path).load()


def test_a_journal_at_or_below_its_files_generation_adds_nothing(tmp_path: Path) -> None:
    """A crash after the file was written whole and before its journal was removed."""
    store = StateStore(tmp_path)
    m = _doc(50)
    store.put(Held(m, 1))
    store.append(Held(_changed(m, 1, 0.9), 2), [1])
    journal = tmp_path / "upd.m%3A1.jsonl"
    kept = journal.read_bytes()
    m3 = _changed(m, 2, 0.4)  # generation 3 rewrote the file whole, without link 1's change
    store.put(Held(m3, 3))
    assert not journal.exists()
    journal.write_bytes(kept)
    held, _ = StateStore(tmp_path).load()
    assert held["m:1"].materialize == m3 and held["m:1"].generation == 3
    assert not journal.exists()


def test_a_journal_without_its_file_is_dropped_and_a_removal_takes_both(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    m = _doc(50)
    store.put(Held(m, 1))
    store.append(Held(_changed(m, 1, 0.9), 2), [1])
    store.remove("m:1", 3, {"m:1": 3})
    assert set(_files(tmp_path)) == {"generation"}
    (tmp_path / "upd.m%3A1.jsonl").write_bytes(b"left by a removal cut short\n")
    held, floor = StateStore(tmp_path).load()
    assert held == {} and floor == 3 and set(_files(tmp_path)) == {"generation"}


def test_the_journal_is_folded_once_it_holds_half_the_files_bytes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    m = _doc(4)
    store.put(Held(m, 1))
    whole = _files(tmp_path)["mat.m%3A1.json"]
    gen = 1
    for k in range(40):
        gen += 1
        m = _changed(m, k % 4, k / 100)
        store.append(Held(m, gen), [k % 4])
        files = _files(tmp_path)
        assert 2 * files.get("upd.m%3A1.jsonl", 0) <= files["mat.m%3A1.json"], (k, files)
    assert _files(tmp_path)["mat.m%3A1.json"] >= whole
    held, _ = StateStore(tmp_path).load()
    assert held["m:1"].materialize == m and held["m:1"].generation == gen
