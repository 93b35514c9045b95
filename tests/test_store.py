"""EpisodeStore: round trip, atomic writes, corrupt files reported and skipped; the sampler."""

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from robobrain.data import CorruptEpisodeError, Episode, EpisodeStore, SequenceSampler
from robobrain.data.store import no_empty_dirs_on_failure


def make_episode(steps: int, tag: int = 0, size: int = 8) -> Episode:
    """Pixels and states encode (tag, t) so windows can be traced back to their source."""
    t = np.arange(steps + 1)
    pixels = np.zeros((steps + 1, size, size, 3), np.uint8)
    pixels[..., 0] = tag
    pixels[..., 1] = t[:, None, None]
    state = np.stack([np.full(steps + 1, tag), t], axis=1).astype(np.float32)
    return Episode(
        pixels=pixels,
        state=state,
        action=np.tile(t[:-1, None], (1, 3)).astype(np.float32) / 100,
        reward=t[:-1].astype(np.float32),
        success=t[:-1] == steps - 1,
        terminated=False,
        meta={"tag": tag},
    )


def test_round_trip(tmp_path):
    store = EpisodeStore(tmp_path)
    ep = make_episode(10, tag=3)
    name = store.add(ep)
    back = EpisodeStore(tmp_path).load(name)
    for field in ("pixels", "state", "action", "reward", "success"):
        np.testing.assert_array_equal(getattr(back, field), getattr(ep, field))
        assert getattr(back, field).dtype == getattr(ep, field).dtype
    assert back.meta == {"tag": 3} and back.terminated is False
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    manifest = json.loads((tmp_path / "manifest.json").read_text())["episodes"]
    assert manifest[name]["length"] == 10 and manifest[name]["success"] is True
    # The summary is the episode's end: a success it left again is no success.
    left = store.add(Episode(ep.pixels, ep.state, ep.action, ep.reward, np.arange(10) == 2))
    assert json.loads((tmp_path / "manifest.json").read_text())["episodes"][left]["success"] is False


def test_invalid_episode_is_refused(tmp_path):
    store = EpisodeStore(tmp_path)
    ep = make_episode(5)
    bad_nan = Episode(ep.pixels, ep.state, ep.action * np.nan, ep.reward, ep.success)
    bad_len = Episode(ep.pixels[:-1], ep.state, ep.action, ep.reward, ep.success)
    bad_dtype = Episode(ep.pixels.astype(np.float32), ep.state, ep.action, ep.reward, ep.success)
    # terminated None was stored pickled (unreadable: the episode was lost), "False" read back True
    bad_end = [Episode(ep.pixels, ep.state, ep.action, ep.reward, ep.success, terminated=t)
               for t in (None, "False", np.array([True, False]))]  # fmt: skip
    # One value is enough (only all-NaN arrays were tried: "all NaN" passed for "any")
    one_inf, one_nan = ep.reward.copy(), ep.state.copy()
    one_inf[2], one_nan[1, 0] = np.inf, np.nan
    bad_one = [Episode(ep.pixels, ep.state, ep.action, one_inf, ep.success),
               Episode(ep.pixels, one_nan, ep.action, ep.reward, ep.success)]  # fmt: skip
    bad_success = Episode(ep.pixels, ep.state, ep.action, ep.reward, np.append(ep.success, False))
    bad_rgba = Episode(np.concatenate([ep.pixels, ep.pixels[..., :1]], -1), ep.state, ep.action, ep.reward,
                       ep.success)  # fmt: skip
    cases = (
        [(bad_nan, "NaN"), (bad_len, "pixels"), (bad_dtype, "dtype")]
        + [(bad_success, "success: expected 1 dims with leading size 5"), (bad_rgba, r"pixels: expected \[T")]
        + [(b, "terminated") for b in bad_end]
        + [(bad_one[0], "reward: contains NaN or inf"), (bad_one[1], "state: contains NaN or inf")]
    )
    for bad, what in cases:
        with pytest.raises(ValueError, match=what):
            store.add(bad)
    assert len(store) == 0
    store.add(Episode(ep.pixels, ep.state, ep.action, ep.reward, ep.success, terminated=np.bool_(True)))
    assert [e.terminated for _, e in EpisodeStore(tmp_path).episodes()] == [True]


def test_truncated_and_garbage_files_are_reported_and_skipped(tmp_path, caplog):
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(6, tag=i)) for i in range(4)]
    path = tmp_path / names[1]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    (tmp_path / names[2]).write_bytes(b"not an npz at all")  # garbage
    reopened = EpisodeStore(tmp_path)
    with pytest.raises(CorruptEpisodeError, match=names[1]):
        reopened.load(names[1])
    loaded = [name for name, _ in reopened.episodes()]
    assert loaded == [names[0], names[3]]
    assert set(reopened.skipped) == {names[1], names[2]}
    assert names[1] in caplog.text
    with pytest.raises(CorruptEpisodeError, match=r"not an \.npz archive"):  # (numpy: "pickled data")
        reopened.load(names[2])


def test_a_read_error_of_the_disk_is_raised_never_recorded_as_corruption(tmp_path, monkeypatch):
    """EIO or too many open files said "not an .npz archive (truncated or overwritten)" of an intact
    file, and the manifest kept it skipped while it was unchanged."""
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(6, tag=i)) for i in range(2)]
    (tmp_path / "manifest.json").unlink()  # (a reader that must read the files)
    real = np.load

    def failing(path, *args, **kwargs):
        if str(path).endswith(names[1]):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", failing)
    with pytest.raises(OSError, match="Input/output error"):
        EpisodeStore(tmp_path)
    monkeypatch.undo()
    again = EpisodeStore(tmp_path)
    assert sorted(again.manifest) == names and not again.skipped
    # A file removed after the listing (another process's truncate) is passed over, not recorded.
    monkeypatch.setattr(EpisodeStore, "names", lambda self: [*names, "episode_000002.npz"])
    assert [name for name, _ in again.episodes()] == names and not again.skipped


def test_a_known_corrupt_file_does_not_make_every_open_reread_the_store(tmp_path, monkeypatch):
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(6, tag=i)) for i in range(3)]
    (tmp_path / names[1]).write_bytes(b"garbage")
    (tmp_path / "manifest.json").unlink()
    assert sorted(EpisodeStore(tmp_path).manifest) == [names[0], names[2]]  # rebuilt once
    loads = []
    monkeypatch.setattr(EpisodeStore, "load", lambda self, name: loads.append(name))
    again = EpisodeStore(tmp_path)
    assert loads == [] and sorted(again.manifest) == [names[0], names[2]] and names[1] in again.skipped
    monkeypatch.undo()
    (tmp_path / names[1]).write_bytes(b"other garbage")  # changed since: looked at again
    opened = EpisodeStore(tmp_path)
    assert names[1] in opened.skipped
    opened.truncate(1)
    assert EpisodeStore(tmp_path).names() == [names[0]]
    # What truncate deleted is no longer skipped: an episode added later under its name is another one.
    assert opened.add(make_episode(6, tag=7)) == names[1] and names[1] not in opened.skipped


def test_every_single_byte_flip_is_reported_or_harmless(tmp_path):
    """A damaged zip raises zlib.error, NotImplementedError, RuntimeError, ... besides OSError and
    ValueError: with each byte of an episode file flipped in turn, the store either reads a valid
    episode or names the file."""
    store = EpisodeStore(tmp_path / "store")
    episode = make_episode(6)
    name = store.add(episode)
    path = tmp_path / "store" / name
    original = path.read_bytes()
    outcomes = set()
    for offset in range(0, len(original), 3):
        damaged = bytearray(original)
        damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            read = store.load(name)
            outcomes.add("read")
            for field in ("pixels", "state", "action", "reward", "success"):  # harmless: the same data
                np.testing.assert_array_equal(getattr(read, field), getattr(episode, field), err_msg=field)
        except CorruptEpisodeError as e:
            outcomes.add("reported")
            assert name in str(e)
    assert "reported" in outcomes


def test_an_episode_of_another_layout_is_refused(tmp_path):
    """One directory holds one env's episodes: mixed shapes would fail later, deep in numpy."""
    store = EpisodeStore(tmp_path)
    store.add(make_episode(4))
    ep = make_episode(4)
    wider = Episode(ep.pixels, np.concatenate([ep.state, ep.state], 1), ep.action, ep.reward, ep.success)
    other_env = Episode(ep.pixels, ep.state, ep.action, ep.reward, ep.success, meta={"env_id": "Other-v0"})
    for bad in (wider, other_env):
        with pytest.raises(ValueError, match="another layout"):
            EpisodeStore(tmp_path).add(bad)  # (a reopened store knows its layout too)
        with pytest.raises(ValueError, match="another layout"):
            store.add(bad)
    assert len(store) == 1
    store.truncate(0)
    store.add(wider)  # an emptied store takes any layout
    assert len(store) == 1


def test_file_with_missing_or_poisoned_fields_is_skipped(tmp_path):
    store = EpisodeStore(tmp_path)
    good = store.add(make_episode(4))
    ep = make_episode(4)
    np.savez(tmp_path / "episode_000001.npz", pixels=ep.pixels, state=ep.state)  # missing fields
    np.savez(
        tmp_path / "episode_000002.npz", pixels=ep.pixels, state=ep.state * np.nan, action=ep.action,
        reward=ep.reward, success=ep.success, terminated=np.array(False), meta=np.array("{}"),
    )  # fmt: skip
    obj = np.array([{"evil": 1}], dtype=object)
    np.savez(
        tmp_path / "episode_000003.npz", pixels=obj, state=ep.state, action=ep.action,
        reward=ep.reward, success=ep.success, terminated=np.array(False), meta=np.array("{}"),
    )  # fmt: skip
    reopened = EpisodeStore(tmp_path)
    assert [n for n, _ in reopened.episodes()] == [good]
    assert "KeyError" in reopened.skipped["episode_000001.npz"]
    assert "NaN" in reopened.skipped["episode_000002.npz"]
    assert "pickle" in reopened.skipped["episode_000003.npz"].lower()


def test_a_hand_written_terminated_flag_that_is_not_a_bool_is_skipped(tmp_path):
    """bool() read the string "False", NaN and 7 as True: the sampler then marked the last step terminal."""
    store = EpisodeStore(tmp_path)
    good = store.add(make_episode(4))
    ep = make_episode(4)
    flags = [np.array("False"), np.array(np.nan), np.array(7), np.array([False])]
    for i, flag in enumerate(flags, start=1):
        np.savez(
            tmp_path / f"episode_{i:06d}.npz", pixels=ep.pixels, state=ep.state, action=ep.action,
            reward=ep.reward, success=ep.success, terminated=flag, meta=np.array("{}"),
        )  # fmt: skip
    reopened = EpisodeStore(tmp_path)
    assert [n for n, _ in reopened.episodes()] == [good]
    assert sorted(reopened.skipped) == [f"episode_{i:06d}.npz" for i in range(1, 5)]
    assert "terminated: expected a bool, got <U5 array of shape ()" in reopened.skipped["episode_000001.npz"]
    assert "got bool array of shape (1,)" in reopened.skipped["episode_000004.npz"]
    for i, flag in enumerate([np.array(1), np.array(0), np.float32(1.0)], start=5):  # (as 0 and 1: read)
        np.savez(
            tmp_path / f"episode_{i:06d}.npz", pixels=ep.pixels, state=ep.state, action=ep.action,
            reward=ep.reward, success=ep.success, terminated=flag, meta=np.array("{}"),
        )  # fmt: skip
    assert [(n, e.terminated) for n, e in EpisodeStore(tmp_path).episodes()][1:] == [
        ("episode_000005.npz", True),
        ("episode_000006.npz", False),
        ("episode_000007.npz", True),
    ]


def test_an_array_header_that_declares_more_than_the_file_holds_is_skipped(tmp_path):
    """A pixels header claiming 4e10 frames: numpy's allocation raised a MemoryError (the machine's
    error, re-raised on purpose), which stopped every command reading the store."""
    import io
    import zipfile

    store = EpisodeStore(tmp_path)
    good = store.add(make_episode(4))
    ep = make_episode(4)
    arrays = {"pixels": ep.pixels, "state": ep.state, "action": ep.action, "reward": ep.reward,
              "success": ep.success, "terminated": np.array(False), "meta": np.array("{}")}  # fmt: skip
    with zipfile.ZipFile(tmp_path / "episode_000001.npz", "w") as z:
        for key, value in arrays.items():
            buf = io.BytesIO()
            if key == "pixels":  # a valid header of a huge shape, then the real (small) data
                header = {"descr": "|u1", "fortran_order": False, "shape": (40_000_000_000, 8, 8, 3)}
                np.lib.format.write_array_header_1_0(buf, header)
                buf.write(value.tobytes())
            else:
                np.lib.format.write_array(buf, value)
            z.writestr(f"{key}.npy", buf.getvalue())
    reopened = EpisodeStore(tmp_path)
    assert [n for n, _ in reopened.episodes()] == [good]
    assert "pixels.npy declares shape (40000000000, 8, 8, 3)" in reopened.skipped["episode_000001.npz"]
    with open(tmp_path / "episode_000002.npz", "wb") as f:  # a bare .npy of the same kind: no zip to
        header = {"descr": "<f4", "fortran_order": False, "shape": (10**14,)}  # read (BadZipFile)
        np.lib.format.write_array_header_1_0(f, header)
        f.write(bytes(64))
    reopened = EpisodeStore(tmp_path)
    assert [n for n, _ in reopened.episodes()] == [good]
    assert "not an .npz archive" in reopened.skipped["episode_000002.npz"]


def test_manifest_is_rebuilt_when_missing_or_corrupt(tmp_path):
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(3 + i)) for i in range(3)]
    (tmp_path / "manifest.json").write_text("{ truncated")
    assert sorted(EpisodeStore(tmp_path).manifest) == names
    (tmp_path / "manifest.json").unlink()
    rebuilt = EpisodeStore(tmp_path)
    assert rebuilt.num_steps() == 3 + 4 + 5
    assert rebuilt.add(make_episode(2)) == "episode_000003.npz"


def test_sampler_windows_never_cross_episodes():
    episodes = [make_episode(n, tag=i) for i, n in enumerate([3, 10, 7, 2])]
    sampler = SequenceSampler(episodes, seq_len=4, seed=0)
    # up to the final observation; the episode of 3 observations: one window, padded
    assert sampler.num_windows == (10 - 2) + (7 - 2) + (3 - 2) + 1 and sampler.num_padded == 1
    batch = sampler.sample(256)
    assert batch.pixels.shape == (256, 4, 8, 8, 3) and batch.action.shape == (256, 4, 3)
    tags = batch.state[..., 0]
    steps = batch.state[..., 1]
    assert np.all(tags == tags[:, :1]), "a window mixes episodes"
    assert np.all((np.diff(steps, axis=1) == 1) | ~batch.valid[:, 1:]), "a window is not contiguous"
    assert set(np.unique(tags[:, 0])) == {0, 1, 2, 3}
    last_seen = set()
    for b in range(len(tags)):
        ep = episodes[int(tags[b, 0])]
        t0 = int(steps[b, 0])
        frames = np.arange(t0, t0 + 4)
        np.testing.assert_array_equal(batch.valid[b], frames <= len(ep))
        np.testing.assert_array_equal(batch.pixels[b], ep.pixels[np.minimum(frames, len(ep))])  # (held)
        n = min(4, len(ep) - t0)  # the per-step arrays end one earlier than the observations
        np.testing.assert_array_equal(batch.action[b, :n], ep.action[t0 : t0 + n])
        np.testing.assert_array_equal(batch.reward[b, :n], ep.reward[t0 : t0 + n])
        np.testing.assert_array_equal(batch.success[b, :n], ep.success[t0 : t0 + n])  # (its last step's)
        assert np.all(batch.action[b, n:] == 0) and np.all(batch.reward[b, n:] == 0)
        assert not batch.success[b, n:].any()
        if t0 + 3 >= len(ep):
            last_seen.add(int(tags[b, 0]))
    assert last_seen == {0, 1, 2, 3}  # the final observation (and the last transition) is trained on
    assert not batch.valid[tags[:, 0] == 3, 3].any() and batch.valid[tags[:, 0] != 3].all()
    # Bad arguments in one line (numpy's "need at least one array to stack", or a silent empty window).
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            sampler.sample(bad)
    assert sampler.gather(np.array([1]), np.array([10 - 4 + 1])).pixels.shape == (1, 4, 8, 8, 3)  # the last
    with pytest.raises(ValueError, match=r"start 8 of episode 1 \(10 steps\): .* start in \[0, 7\]"):
        sampler.gather(np.array([1]), np.array([8]))
    with pytest.raises(ValueError, match=r"start 1 of episode 3 \(2 steps\): .* start in \[0, 0\]"):
        sampler.gather(np.array([3]), np.array([1]))
    with pytest.raises(ValueError, match="ep_idx and starts must be"):
        sampler.gather(np.array([1, 2]), np.array([0]))
    longer = SequenceSampler(episodes, seq_len=12)  # (no episode fills a window: each gives one, padded)
    assert longer.num_windows == longer.num_padded == 4


def test_holdout_split_is_fixed_by_episode_number(tmp_path):
    from robobrain.training.wm_trainer import split_episodes

    store = EpisodeStore(tmp_path)
    for i in range(10):
        store.add(make_episode(3, tag=i))

    def held_tags():
        train, held = split_episodes(EpisodeStore(tmp_path), 0.2)
        assert len(train) + len(held) == len(EpisodeStore(tmp_path).load_all())
        return [ep.meta["tag"] for ep in held]

    assert held_tags() == [4, 9]
    (tmp_path / "episode_000002.npz").write_bytes(b"corrupt")  # unreadable now: nothing shifts
    assert held_tags() == [4, 9]
    # The period's last files gone: none held out (eval-wm then asks for --split all); holding out the
    # last file instead made episode 6, trained on, the "held-out" one.
    for i in (4, 7, 8, 9):
        (tmp_path / f"episode_{i:06d}.npz").unlink()
    assert held_tags() == []
    for i in (3, 5, 6):  # fewer episodes than the period: the last file is held out, never another
        (tmp_path / f"episode_{i:06d}.npz").unlink()
    assert held_tags() == []  # (the last file, 2, is unreadable)
    (tmp_path / "episode_000002.npz").unlink()
    assert held_tags() == [1]
    (tmp_path / "episode_000001.npz").write_bytes(b"corrupt")
    assert held_tags() == []


def test_a_copied_in_episode_of_another_layout_is_skipped_by_name(tmp_path):
    """A file of another env copied into a store: reported like a corrupt one, not stacked later."""
    store = EpisodeStore(tmp_path / "a")
    store.add(make_episode(4))
    ep = make_episode(4)
    other = Episode(ep.pixels, ep.state, np.zeros((4, 4), np.float32), ep.reward, ep.success)
    EpisodeStore(tmp_path / "b").add(other)
    (tmp_path / "b" / "episode_000000.npz").rename(tmp_path / "a" / "episode_000001.npz")
    reopened = EpisodeStore(tmp_path / "a")
    assert [n for n, _ in reopened.episodes()] == ["episode_000000.npz"]
    assert "another layout" in reopened.skipped["episode_000001.npz"]
    assert list(reopened.manifest) == ["episode_000000.npz"] and reopened.num_steps() == 4
    with pytest.raises(ValueError, match="different shapes per step"):
        SequenceSampler([ep, other], seq_len=2)
    # The manifest keeps the layout: with the first episode gone, the foreign file still is foreign.
    reopened.add(make_episode(4, tag=2))
    (tmp_path / "a" / "episode_000000.npz").unlink()
    again = EpisodeStore(tmp_path / "a")
    assert [n for n, _ in again.episodes()] == ["episode_000002.npz"] == list(again.manifest)
    assert again.add(make_episode(4, tag=3)) == "episode_000003.npz"
    # A store whose files all changed takes the layout they give (the manifest is only a cache).
    for name in again.names():
        (tmp_path / "a" / name).unlink()
    EpisodeStore(tmp_path / "b").add(other)
    (tmp_path / "b" / "episode_000000.npz").rename(tmp_path / "a" / "episode_000000.npz")
    assert [n for n, _ in EpisodeStore(tmp_path / "a").episodes()] == ["episode_000000.npz"]


def test_corrupt_files_stay_known_while_unchanged_even_with_no_readable_episode(tmp_path, monkeypatch):
    for i in range(2):
        (tmp_path / f"episode_{i:06d}.npz").write_bytes(b"junk")
    assert len(EpisodeStore(tmp_path).skipped) == 2
    reads = []
    monkeypatch.setattr(EpisodeStore, "load", lambda self, name: reads.append(name))
    for _ in range(2):  # (they were read, warned about and the manifest rewritten at every open)
        assert len(EpisodeStore(tmp_path).skipped) == 2
    assert reads == []


def test_two_threads_adding_at_once_store_both_episodes_intact(tmp_path, monkeypatch):
    import threading

    import robobrain.data.store as store_module

    a, b = EpisodeStore(tmp_path), EpisodeStore(tmp_path)  # both pick episode_000000 next
    barrier, savez, waited, temporaries = threading.Barrier(2, timeout=10), np.savez_compressed, set(), []

    def overlapping(f, **arrays):  # both first writes in progress at once (the loser then retries)
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            temporaries.append(f.name)
            barrier.wait()
        savez(f, **arrays)

    monkeypatch.setattr(store_module.np, "savez_compressed", overlapping)
    names: list[str] = []
    threads = [threading.Thread(target=lambda s=s, i=i: names.append(s.add(make_episode(5, tag=i))))
               for i, s in ((1, a), (2, b))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temporaries)) == 2  # (one shared temporary: the writes could mix, by timing)
    reopened = EpisodeStore(tmp_path)
    assert sorted(names) == ["episode_000000.npz", "episode_000001.npz"] and not reopened.skipped
    assert sorted(int(ep.pixels[0, 0, 0, 0]) for ep in reopened.load_all()) == [1, 2]


def test_the_manifest_rereads_files_changed_since_it_was_written(tmp_path):
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(5, tag=i)) for i in range(3)]
    path = tmp_path / names[1]
    path.write_bytes(path.read_bytes()[:100])  # truncated after the manifest listed it
    reopened = EpisodeStore(tmp_path)
    assert sorted(reopened.manifest) == [names[0], names[2]] and reopened.num_steps() == 10
    assert names[1] in reopened.skipped
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    for bad in ({"episodes": {names[0]: {}}}, {"episodes": [names[0]]}, {"episodes": {names[0]: 5}}):
        (tmp_path / "manifest.json").write_text(json.dumps({**manifest, **bad}))
        assert sorted(EpisodeStore(tmp_path).manifest) == [names[0], names[2]]
    # A manifest from before the stats (version 1) is read afresh once: it vouched for the bad file.
    v1 = {"version": 1, "episodes": {n: {**manifest["episodes"].get(n, manifest["episodes"][names[0]])}
                                     for n in names}}  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(v1))
    assert sorted(EpisodeStore(tmp_path).manifest) == [names[0], names[2]]


def test_a_read_only_store_opens_without_rewriting_its_manifest(tmp_path, monkeypatch, caplog):
    store = EpisodeStore(tmp_path)
    store.add(make_episode(3))
    (tmp_path / "manifest.json").unlink()

    def read_only(self):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(EpisodeStore, "_write_manifest", read_only)
    with caplog.at_level("WARNING"):
        assert len(EpisodeStore(tmp_path, create=False).load_all()) == 1
    assert "cannot update the manifest" in caplog.text


def test_meta_must_be_a_json_object(tmp_path):
    store = EpisodeStore(tmp_path)
    ep = make_episode(3)
    for meta in ({"noise": float("nan")}, {"seed": np.int64(3)}):
        with pytest.raises(ValueError, match="meta is not JSON"):
            store.add(Episode(ep.pixels, ep.state, ep.action, ep.reward, ep.success, meta=meta))
    np.savez(
        tmp_path / "episode_000000.npz", pixels=ep.pixels, state=ep.state, action=ep.action,
        reward=ep.reward, success=ep.success, terminated=np.array(False), meta=np.array("null"),
    )  # fmt: skip
    reopened = EpisodeStore(tmp_path)
    assert "meta: expected a dict" in reopened.skipped["episode_000000.npz"]
    assert reopened.add(ep) == "episode_000001.npz"


def test_names_go_on_past_a_million_and_a_taken_name_is_never_overwritten(tmp_path, monkeypatch):
    store = EpisodeStore(tmp_path)
    ep = make_episode(3)
    store.add(ep)
    (tmp_path / "episode_000000.npz").rename(tmp_path / "episode_999999.npz")
    reopened = EpisodeStore(tmp_path)
    assert [reopened.add(ep) for _ in range(2)] == ["episode_1000000.npz", "episode_1000001.npz"]
    assert EpisodeStore(tmp_path).names()[0] == "episode_999999.npz"  # (in the order they were added)
    # Another writer took the next name since: this one takes the one after, and loses nothing.
    monkeypatch.setattr(EpisodeStore, "_next_index", lambda self: 1_000_000)
    assert reopened.add(make_episode(4)) == "episode_1000002.npz"
    assert len(EpisodeStore(tmp_path).load_all()) == 4


def test_temporaries_of_dead_writers_are_removed_at_open(tmp_path):
    EpisodeStore(tmp_path).add(make_episode(3))
    dead = tmp_path / ".tmp-999999999-episode_000001.npz"
    live = tmp_path / ".tmp-1-episode_000002.npz"  # pid 1 is running
    fresh = tmp_path / ".tmp-999999998-episode_000003.npz"  # e.g. another host's write in progress
    ours = tmp_path / f".tmp-{os.getpid()}-episode_000004.npz"  # e.g. another thread's
    old = time.time() - 3600
    for path in (dead, live, fresh, ours):
        path.write_bytes(b"half")
        if path is not fresh and path is not ours:
            os.utime(path, (old, old))
    assert len(EpisodeStore(tmp_path).load_all()) == 1
    assert not dead.exists() and live.exists() and fresh.exists() and ours.exists()
    os.utime(ours, (old, old))  # untouched for an hour: its writer is gone
    EpisodeStore(tmp_path)
    assert not ours.exists() and fresh.exists()


def test_a_name_is_claimed_by_rename_only_where_hard_links_are_missing(tmp_path, monkeypatch):
    store = EpisodeStore(tmp_path)

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert store.add(make_episode(3)) == "episode_000000.npz"  # (a rename claimed it)

    def broken(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", broken)
    with pytest.raises(OSError, match="Input/output"):
        store.add(make_episode(3))
    assert store.names() == ["episode_000000.npz"] and not list(tmp_path.glob(".tmp-*"))


def test_a_file_in_the_way_of_a_store_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        EpisodeStore(tmp_path / "file")


def test_a_new_store_stays_an_empty_directory_until_its_first_episode(tmp_path):
    store = EpisodeStore(tmp_path / "new")
    assert list((tmp_path / "new").iterdir()) == []
    store.add(make_episode(3))
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["episodes"]


def test_a_failed_command_leaves_no_empty_folder_and_removes_no_file(tmp_path):
    (tmp_path / "old").mkdir()
    with pytest.raises(RuntimeError):
        out = tmp_path / "a" / "b" / "out"
        with no_empty_dirs_on_failure(out, tmp_path / "old", tmp_path / "kept", None):
            (out / "episodes" / "deep").mkdir(parents=True)
            (tmp_path / "kept" / "sub").mkdir(parents=True)
            (tmp_path / "kept" / "sub" / "log.csv").write_text("step\n")
            raise RuntimeError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "old"]  # (a/ was made for out/)
    assert (tmp_path / "kept" / "sub" / "log.csv").read_text() == "step\n"
    with no_empty_dirs_on_failure(tmp_path / "fine"):  # (a block that succeeds keeps what it made)
        (tmp_path / "fine").mkdir()
    assert (tmp_path / "fine").is_dir()


def test_a_json_write_that_dies_midway_leaves_the_old_file(tmp_path):
    """The manifest and the checkpoints' latest pointer go through a temporary and a rename (writing
    in place passed every other store test)."""
    from robobrain.data.store import _atomic_write_bytes, atomic_write_json

    path = tmp_path / "manifest.json"
    atomic_write_json(path, {"episodes": {"a": 1}})

    def dies(f):
        f.write(b'{"episo')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_write_bytes(path, dies)
    assert json.loads(path.read_text()) == {"episodes": {"a": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    with pytest.raises(TypeError):  # atomic_write_json itself: an object JSON cannot take, midway
        atomic_write_json(path, {"episodes": {"a": 2, "b": object()}})
    assert json.loads(path.read_text()) == {"episodes": {"a": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads the synced files' names from /proc")
def test_writes_are_fsynced_before_they_are_renamed_into_place(tmp_path, monkeypatch):
    """Episodes, the manifest and every file of a checkpoint reach the disk before their rename, and
    the folder's entry after it (a power loss left a renamed but empty file)."""
    from robobrain.checkpoint import save_checkpoint
    from robobrain.config import get_preset, to_dict
    from robobrain.world_model import WorldModel

    events: list[tuple[str, str]] = []
    fsync, replace, link = os.fsync, os.replace, os.link

    def spy_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def spy_replace(src, dst):
        events.append(("rename", str(src)))
        return replace(src, dst)

    def spy_link(src, dst):  # (an episode takes its name by a hard link: exclusive)
        events.append(("rename", str(src)))
        return link(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "link", spy_link)
    store = EpisodeStore(tmp_path / "store")
    name = store.add(make_episode(3))
    for i, (event, path) in enumerate(events):  # each temporary synced just before its rename, and
        if event == "rename":  # the folder just after it
            assert events[i - 1] == ("fsync", path) and events[i + 1] == ("fsync", str(tmp_path / "store"))
    assert any(e == "rename" and Path(p).name.endswith(name) for e, p in events)  # (the episode's)
    events.clear()
    cfg = get_preset("debug").world_model
    save_checkpoint(tmp_path / "run", 1, WorldModel(cfg), {"world_model": to_dict(cfg)})
    (tmp,) = [Path(p) for e, p in events if e == "rename" and Path(p).name.startswith(".tmp-step_")]
    renamed = events.index(("rename", str(tmp)))
    for part in ("model.safetensors", "config.json", "training_state/state.json", "training_state"):
        assert events.index(("fsync", str(tmp / part))) < renamed, part
    assert ("fsync", str(tmp_path / "run" / "checkpoints")) in events[renamed:]


def test_ctrl_c_during_an_episode_write_waits_for_it_then_interrupts(tmp_path, monkeypatch):
    """A SIGINT that landed in numpy's zip writer was re-raised as a ValueError ("Can't close the ZIP
    file while there is an open writing handle"): `robobrain collect` reported an error, not an
    interrupt. Now the episode is written whole, then the KeyboardInterrupt comes."""
    import signal

    from numpy.lib import format as npformat

    write_array = npformat.write_array
    sent = []

    def interrupted_midway(fp, array, *args, **kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # (Python runs its handler before the next bytecode)
        return write_array(fp, array, *args, **kwargs)

    monkeypatch.setattr(npformat, "write_array", interrupted_midway)
    store = EpisodeStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.add(make_episode(6, tag=2))
    assert sent and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    (name,) = EpisodeStore(tmp_path).names()
    np.testing.assert_array_equal(EpisodeStore(tmp_path).load(name).pixels, make_episode(6, tag=2).pixels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_a_file_rewritten_at_the_same_size_is_read_again(tmp_path):
    """Bit rot in place keeps the size: the manifest's modification time finds it (a size-only check
    kept the damaged file in the manifest)."""
    store = EpisodeStore(tmp_path)
    names = [store.add(make_episode(5, tag=i)) for i in range(2)]
    path = tmp_path / names[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    reopened = EpisodeStore(tmp_path)
    assert sorted(reopened.manifest) == [names[0]] and names[1] in reopened.skipped


# --- from a second mutation audit (session 30) ------------------------------------------------------
def test_the_seed_fixes_the_sampled_windows():
    episodes = [make_episode(20, tag=i) for i in range(3)]

    def draw(seed):
        batch = SequenceSampler(episodes, seq_len=4, seed=seed).sample(16)
        return batch.state  # (tag, t) of every observation: which episode and start

    np.testing.assert_array_equal(draw(3), draw(3))
    assert not np.array_equal(draw(3), draw(4))


def test_a_dangling_symlink_is_reported_and_the_other_episodes_stay_readable(tmp_path, caplog):
    """An unfetched git-annex/DVC file (a symlink to nothing) in a store copied without its
    modification times: its FileNotFoundError escaped the layout check, so every healthy episode was
    skipped as if it had vanished (0 readable of 4, nothing logged) and add() raised it."""
    import shutil

    src = EpisodeStore(tmp_path / "src")
    for i in range(4):
        src.add(make_episode(5, tag=i))
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "src", copy, copy_function=shutil.copyfile)  # (new mtimes)
    (copy / "episode_000000.npz").unlink()
    (copy / "episode_000000.npz").symlink_to("../.git/annex/objects/xx/SHA256E-s1--abc.npz")
    store = EpisodeStore(copy, create=False)
    assert sorted(store.manifest) == ["episode_000001.npz", "episode_000002.npz", "episode_000003.npz"]
    assert "a symlink to nothing" in store.skipped["episode_000000.npz"]
    assert "a symlink to nothing" in caplog.text
    store.add(make_episode(5, tag=9))
    assert len(EpisodeStore(copy).manifest) == 4
