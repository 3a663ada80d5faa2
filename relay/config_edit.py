"""Editing the operator's YAML file: change only the keys touched, write it atomically.

The config file stays the one source of truth: it is reviewed, diffed and kept
in git by the people who run Sluice. The admin's forms and ``sluice providers
add|edit|...`` are a second way to *edit that file*, so an edit must leave
every other byte as it was: comments, blank lines, key order, quoting, flow
style, Windows line endings, a missing final newline.

``ConfigDocument`` reads the file with ruamel.yaml in round-trip mode (the
one YAML library that keeps comments; PyYAML drops them) and edits its tree.
ruamel re-emits untouched parts almost, not exactly, as written (it may move a
comment's indentation or respace a flow mapping), so ``render`` does not hand
out ruamel's text as is: it diffs ruamel's rendering of the unedited tree
against that of the edited one, and applies only the changed lines to the
original text. Lines ruamel would have normalised stay as the operator wrote
them unless an edit touches them. The result is checked to load to the same
data as ruamel's own rendering, and that rendering is used if it ever does
not (correct beats pretty).

A key that lives behind an anchor, an alias or a merge key (``<<: *defaults``)
is refused with the reason: changing it in one place would change it in
every place that shares it, which is an edit for a person, not a form.

``write_atomic`` writes the new text under an exclusive ``flock`` on a
``.lock`` file beside the config, after checking the file is still the one
the edit started from (else ``EditRefused`` with the difference: someone's
hand edit is never overwritten); temp file in the same directory, fsync,
mode and owner kept, ``os.replace``, fsync of the directory. A ``kill -9`` at
any point leaves the old or the new file, never a half-written one.

``write_secret`` puts a typed secret in a file of its own (0600, owned by the
daemon's user) in the secrets directory; the YAML gets ``password_file:``.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedBase, CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.tokens import CommentToken

from relay.config import Config, loads, resolve_paths
from relay.errors import ConfigError, SluiceError

__all__ = [
    "ConfigDocument",
    "EditRefused",
    "FieldError",
    "Loc",
    "digest_of",
    "field_name",
    "load_with_text",
    "lock_path",
    "secret_file_name",
    "unified_diff",
    "write_atomic",
    "write_secret",
]

Loc = tuple[str | int, ...]

#: the config loader reads at most this much (``relay.config.MAX_CONFIG_BYTES``)
_MAX_BYTES = 1024 * 1024
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: a secrets file's name: what ``write_secret`` accepts (no path separators, no dot first)
_SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def digest_of(data: bytes) -> str:
    """The sha256 (hex) of a config file's bytes: what ``base_digest`` and the daemon compare."""
    return hashlib.sha256(data).hexdigest()


def field_name(loc: Loc) -> str:
    """A form field's name from a key path inside the edited object: ``oauth2.client_id``."""
    return ".".join(str(p) for p in loc)


def unified_diff(old: str, new: str, *, path: str = "config") -> str:
    """A unified diff of two texts of the config file (old: as loaded; new: on disk now)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=f"{path} (as loaded)",
            tofile=f"{path} (on disk now)",
        )
    )


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one form field: ``field`` as the form names it, ``message`` in words."""

    field: str
    message: str


class EditRefused(SluiceError, ValueError):
    """An edit of the config file was refused; nothing was written.

    ``errors`` lists the fields at fault (a form shows each beside its field);
    ``diff`` is set when the file changed on disk since it was loaded (what
    the other change was, as a unified diff), so that nobody's work is
    overwritten unseen.
    """

    def __init__(
        self,
        message: str,
        errors: Sequence[FieldError] = (),
        *,
        diff: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.errors: list[FieldError] = list(errors)
        self.diff = diff

    def __str__(self) -> str:
        if not self.errors:
            return self.message
        return "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in self.errors)


# --------------------------------------------------------------------- reading


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation of a block-style file, as ruamel wants them.

    Read from the first nested mapping key and the first block sequence dash:
    ``  - id: main`` under ``providers:`` is offset 2, sequence 4; ``- id: main``
    (PyYAML's own style) is offset 0, sequence 2. Files that
    show neither get the common style (2, 4, 2).
    """
    mapping: int | None = None
    offset: int | None = None
    previous_key_indent: int | None = None
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if previous_key_indent == indent and stripped.startswith("- ") and offset is None:
            offset = 0  # "key:\n- item": the dash at the key's own column (PyYAML's style)
        elif previous_key_indent is not None and indent > previous_key_indent:
            if stripped.startswith("- ") and offset is None:
                offset = indent - previous_key_indent
            elif not stripped.startswith("-") and mapping is None:
                mapping = indent - previous_key_indent
        previous_key_indent = indent if re.match(r"^[^#\s-][^:]*:\s*(#.*)?$", stripped) else None
        if mapping is not None and offset is not None:
            break
    mapping = mapping or 2
    offset = 2 if offset is None else offset
    return mapping, offset + 2, offset


def _new_yaml(indent: tuple[int, int, int]) -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never fold a long value the operator wrote on one line
    y.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    return y


def _dump(y: YAML, data: object) -> str:
    out = io.StringIO()
    y.dump(data, out)
    return out.getvalue()


def _plain(value: object) -> object:
    """A ruamel value as plain Python (dict, list, str, int ...), for comparisons."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, ScalarString):
        return str(value)
    return value


class ConfigDocument:
    """One config file, read for editing: its bytes, their digest and the YAML tree.

    ``get``/``set``/``delete``/``append`` take a key path such as
    ``("providers", 2, "port")``; ``render()`` is the file with the edits,
    byte-identical elsewhere.
    """

    def __init__(self, raw: bytes, *, path: Path | None = None) -> None:
        self.path = path
        self.raw = raw
        #: sha256 of the bytes read
        self.digest = digest_of(raw)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EditRefused(f"the config file is not UTF-8 text: {exc}") from None
        #: the line ending the file uses (kept on write)
        self.newline = "\r\n" if "\r\n" in text else "\n"
        #: whether the file ends with a newline (kept on write)
        self.final_newline = text.endswith("\n") or not text
        #: the file's text with "\n" line endings (what ruamel reads)
        self.text = text.replace("\r\n", "\n")
        self._yaml = _new_yaml(_guess_indent(self.text))
        try:
            data = self._yaml.load(self.text)
        except RuamelError as exc:
            raise EditRefused(f"the config file is not valid YAML: {exc}") from None
        if data is None:
            data = CommentedMap()
        if not isinstance(data, CommentedMap):
            raise EditRefused("the config file is not a mapping of sections")
        self._data: CommentedMap = data
        #: ruamel's rendering of the file as read: what ``render`` diffs against
        self._before = _dump(self._yaml, data)
        self.changed: list[Loc] = []

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ConfigDocument:
        """Read ``path`` (at most 1 MiB, as the loader) for editing.

        Raises:
            EditRefused: unreadable, too large, not UTF-8, not YAML, not a mapping.
        """
        p = Path(path)
        try:
            with open(p, "rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except OSError as exc:
            raise EditRefused(f"cannot read {p}: {exc.strerror or exc}") from None
        if len(raw) > _MAX_BYTES:
            raise EditRefused(f"{p} is larger than {_MAX_BYTES // 1024} KiB")
        return cls(raw, path=p)

    # ------------------------------------------------------------ navigation

    @property
    def data(self) -> CommentedMap:
        """The YAML tree (ruamel's round-trip types)."""
        return self._data

    def _walk(self, loc: Loc) -> Iterator[tuple[Loc, object, str | int, object]]:
        """(path so far, container, part, value) for each step of ``loc``; KeyError if absent."""
        node: object = self._data
        for i, part in enumerate(loc):
            if isinstance(node, Mapping) and isinstance(part, str) and part in node:
                value = node[part]
            elif (
                isinstance(node, list) and isinstance(part, int) and -len(node) <= part < len(node)
            ):
                value = node[part]
            else:
                raise KeyError(loc[: i + 1])
            yield loc[:i], node, part, value
            node = value

    def has(self, loc: Loc) -> bool:
        """Whether ``loc`` is set in the file (a key written with no value counts)."""
        try:
            for _ in self._walk(loc):
                pass
        except KeyError:
            return False
        return True

    def get(self, loc: Loc, default: Any = None) -> Any:
        """The value at ``loc`` (ruamel's types: a mapping is a ``CommentedMap``), or default."""
        value: Any = self._data
        try:
            for step in self._walk(loc):
                value = step[3]
        except KeyError:
            return default
        return value

    def find_provider(self, provider_id: str) -> int | None:
        """The index of the provider with this id in ``providers``, or None."""
        providers = self._data.get("providers")
        if not isinstance(providers, list):
            return None
        for i, item in enumerate(providers):
            if isinstance(item, Mapping) and str(item.get("id")) == provider_id:
                return i
        return None

    def shared_reason(self, loc: Loc) -> str | None:
        """Why ``loc`` cannot be edited here: it lives behind an anchor, alias or merge key."""
        node: object = self._data
        for i, part in enumerate(loc):
            anchor = _anchor(node)
            if anchor is not None and i > 0:
                return (
                    f"{field_name(loc[:i])} is the YAML anchor &{anchor}, which other parts of "
                    "the file reuse; changing it here would change them too: edit the file"
                )
            if isinstance(node, CommentedMap) and isinstance(part, str):
                if part not in node:
                    if _merged_from(node) is not None:
                        # A new own key would hide the merged one: also an edit for a person.
                        return (
                            f"{field_name(loc[:i]) or 'this section'} takes keys from a merge key "
                            f"(<<: *{_merged_from(node)}); edit the file"
                        )
                    return None
                if not _own_key(node, part):
                    return (
                        f"{field_name(loc[: i + 1])} comes from the merge key "
                        f"<<: *{_merged_from(node)}; changing it here would change every "
                        "section that merges it: edit the file"
                    )
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int):
                if not -len(node) <= part < len(node):
                    return None
                node = node[part]
            else:
                return None
        anchor = _anchor(node)
        if anchor is not None:
            return (
                f"{field_name(loc)} is the YAML anchor &{anchor}, which other parts of the file "
                "reuse; changing it here would change them too: edit the file"
            )
        return None

    def provenance(self, loc: Loc, *, secrets_dir: Path | None = None) -> str | None:
        """Where a value comes from when it is not the file's to change (why it is read-only).

        ``"${SLUICE_X}"`` in the value: "from the environment variable SLUICE_X";
        a secret's base key (``("providers", 0, "password")``): from the
        environment variable, the file or the systemd credential it names (a
        file in ``secrets_dir`` is Sluice's own, so editable: None); behind
        an anchor or merge key: why. None: the value is the file's own.
        """
        shared = self.shared_reason(loc)
        if shared is not None:
            return shared
        value = self.get(loc)
        if isinstance(value, str):
            names = _VAR.findall(value)
            if names:
                return "from the environment variable " + ", ".join(dict.fromkeys(names))
        if not loc or not isinstance(loc[-1], str):
            return None
        parent = self.get(loc[:-1])
        if not isinstance(parent, Mapping):
            return None
        name = loc[-1]
        env = parent.get(f"{name}_env")
        if env is not None:
            return f"from the environment variable {env}"
        file = parent.get(f"{name}_file")
        if file is not None:
            path = Path(str(file))
            if secrets_dir is not None and path.is_absolute() and path.parent == secrets_dir:
                return None
            if not path.is_absolute():
                return f"from the systemd credential {file} (or the file {file})"
            return f"from the file {file}"
        if (
            name == "password"
            and len(loc) == 3
            and loc[0] == "providers"
            and name not in parent
            and parent.get("username")
            and parent.get("oauth2") is None
        ):
            return f"from the systemd credential {parent.get('id')}"
        return None

    # --------------------------------------------------------------- editing

    def _container(self, loc: Loc, *, create: bool) -> Any:
        """The mapping or sequence that holds ``loc[-1]``; missing mappings made if ``create``."""
        node: Any = self._data
        for i, part in enumerate(loc[:-1]):
            if isinstance(node, CommentedMap) and isinstance(part, str):
                child = node.get(part)
                if child is None:
                    if not create or (part in node and node[part] is not None):
                        raise KeyError(loc[: i + 1])
                    child = CommentedMap()
                    _put(node, part, child)
                node = child
            elif isinstance(node, CommentedSeq) and isinstance(part, int):
                if not -len(node) <= part < len(node):
                    raise KeyError(loc[: i + 1])
                node = node[part]
            else:
                raise KeyError(loc[: i + 1])
        return node

    def _refuse_shared(self, loc: Loc) -> None:
        reason = self.shared_reason(loc)
        if reason is not None:
            raise EditRefused(
                reason, [FieldError(field_name(loc[2:] if _in_list(loc) else loc[1:]), reason)]
            )

    def set(self, loc: Loc, value: object) -> None:
        """Set the value at ``loc`` (a missing key is added at the end of its mapping).

        The old value's quoting is kept (a double-quoted string stays double-
        quoted), and so is a flow-style list's style.

        Raises:
            EditRefused: the key lives behind an anchor, alias or merge key.
            KeyError: a list index that does not exist.
        """
        self._refuse_shared(loc)
        edited = loc
        missing = self._first_missing(loc)
        if missing is not None:
            # Missing mappings on the way (oauth2: on a new provider) are added as one
            # value, so that a comment ending the block moves below all of it.
            for part in reversed(loc[missing + 1 :]):
                value = {part: value}
            loc = loc[: missing + 1]
        parent = self._container(loc, create=True)
        key = loc[-1]
        if isinstance(parent, CommentedMap) and isinstance(key, str):
            old = parent.get(key)
            new = _like(old, value)
            if key in parent:
                if _plain(old) == _plain(new) and type(old) is type(new):
                    return
                parent[key] = new
            else:
                _put(parent, key, new)
        elif isinstance(parent, CommentedSeq) and isinstance(key, int):
            parent[key] = _like(parent[key], value)
        else:
            raise KeyError(loc)
        self.changed.append(edited)

    def _first_missing(self, loc: Loc) -> int | None:
        """The index in ``loc`` of the first mapping on the way to its last key that is
        missing (or empty: ``oauth2:`` with no value); None when they all exist."""
        node: object = self._data
        for i, part in enumerate(loc[:-1]):
            if isinstance(node, CommentedMap) and isinstance(part, str):
                if node.get(part) is None:
                    return i
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int):
                if not -len(node) <= part < len(node):
                    return None  # _container says which
                node = node[part]
            else:
                return None
        return None

    def delete(self, loc: Loc) -> bool:
        """Remove ``loc`` (a key and its value, or a list item); False if it was not there.

        The comment that followed the removed entry's line, if it belongs to
        what comes after it, is kept.
        """
        if not self.has(loc):
            return False
        self._refuse_shared(loc)
        parent = self._container(loc, create=False)
        key = loc[-1]
        _remove(parent, key)
        self.changed.append(loc)
        return True

    def append(self, loc: Loc, value: object) -> int:
        """Append ``value`` to the list at ``loc`` (made if missing); its new index."""
        self._refuse_shared(loc)
        seq = self.get(loc)
        if seq is None:
            seq = CommentedSeq()
            self.set(loc, seq)
            seq = self.get(loc)
        if not isinstance(seq, CommentedSeq):
            raise EditRefused(f"{field_name(loc)} is not a list")
        item = _to_ruamel(value)
        if len(seq) == 0 and seq.fa.flow_style():
            seq.fa.set_block_style()  # "providers: []" becomes a block list
        _append(seq, item)
        self.changed.append((*loc, len(seq) - 1))
        return len(seq) - 1

    # --------------------------------------------------------------- writing

    def render(self) -> str:
        """The file's text with the edits, its line endings and final newline as read."""
        after = _dump(self._yaml, self._data)
        if after == self._before:
            text = self.text
        else:
            text = _splice(self.text, self._before, after)
            if _load_plain(text) != _load_plain(after):
                text = after  # never seen; correct beats pretty
        if not self.final_newline:
            text = text.removesuffix("\n")
        elif text and not text.endswith("\n"):
            text += "\n"
        return text.replace("\n", self.newline) if self.newline != "\n" else text

    def diff(self) -> str:
        """What ``render`` changes, as a unified diff (for a confirmation, a log line)."""
        name = str(self.path) if self.path else "config"
        return "".join(
            difflib.unified_diff(
                self.text.splitlines(keepends=True),
                self.render().replace("\r\n", "\n").splitlines(keepends=True),
                fromfile=name,
                tofile=f"{name} (edited)",
            )
        )


def _in_list(loc: Loc) -> bool:
    return len(loc) >= 2 and isinstance(loc[1], int)


def _anchor(node: object) -> str | None:
    if isinstance(node, CommentedBase | ScalarString):
        anchor = node.yaml_anchor()
        if anchor is not None and anchor.value:
            return str(anchor.value)
    return None


def _merged_from(node: CommentedMap) -> str | None:
    merges = getattr(node, "merge", None) or []
    # ruamel < 0.18.7 keeps (position, mapping) pairs, later versions the mappings.
    maps = [m[1] if isinstance(m, tuple) else m for m in merges]
    names = [str(_anchor(m) or "?") for m in maps]
    return ", *".join(names) if names else None


def _own_key(node: CommentedMap, key: str) -> bool:
    if not getattr(node, "merge", None):
        return True
    own = getattr(node, "_ok", None)
    return own is None or key in own


#: libyaml's safe loader when PyYAML has it (a 20 KB file: 3 ms, not 70)
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_plain(text: str) -> object:
    try:
        return yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError:
        return object()  # never equal: the splice broke something


def _to_ruamel(value: object) -> object:
    """Plain Python (dict, list, scalar) as ruamel's round-trip types, in block style."""
    if isinstance(value, CommentedMap | CommentedSeq):
        return value
    if isinstance(value, Mapping):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _to_ruamel(v)
        return out
    if isinstance(value, list | tuple):
        seq = CommentedSeq()
        for v in value:
            seq.append(_to_ruamel(v))
        return seq
    if isinstance(value, Path):
        return str(value)
    return value


def _like(old: object, value: object) -> object:
    """``value`` in the style of the value it replaces (quoting, flow lists)."""
    new = _to_ruamel(value)
    if isinstance(old, ScalarString) and isinstance(new, str) and not isinstance(new, ScalarString):
        return type(old)(new)
    if isinstance(old, CommentedSeq) and isinstance(new, CommentedSeq):
        if old.fa.flow_style():
            new.fa.set_flow_style()
        quoted = next((v for v in old if isinstance(v, ScalarString)), None)
        if quoted is not None:  # the list's items were quoted: new ones are too
            for i, v in enumerate(new):
                if isinstance(v, str) and not isinstance(v, ScalarString):
                    new[i] = type(quoted)(v)
    if isinstance(old, CommentedMap) and isinstance(new, CommentedMap) and old.fa.flow_style():
        new.fa.set_flow_style()
    return new


# ---------------------------------------------------- comments around the end
#
# ruamel keeps a comment *after* a value on the last key before it: the comment
# block that introduces the next section ("# Routing ...") sits on the last key
# of the previous section. Appending after that key would put the new entry
# below the next section's comment; these helpers move the part of the comment
# that belongs to what follows (the lines indented less than the entry, and
# the blank lines before them) onto the new last entry instead.


def _last_comment_holder(node: object) -> tuple[Any, Any] | None:
    """(container, key) whose trailing comment ends ``node``, the deepest last entry."""
    holder: tuple[Any, Any] | None = None
    while isinstance(node, CommentedMap | CommentedSeq) and len(node) > 0:
        key: Any = (
            next(reversed(list(node.keys()))) if isinstance(node, CommentedMap) else len(node) - 1
        )
        holder = (node, key)
        node = node[key]
    return holder


def _comment_of(container: Any, key: Any) -> CommentToken | None:
    entry = container.ca.items.get(key)
    if not entry:
        return None
    index = 2 if isinstance(container, CommentedMap) else 0
    token = entry[index] if len(entry) > index else None
    return token if isinstance(token, CommentToken) else None


def _split_tail(text: str, column: int) -> tuple[str, str]:
    """Split a trailing comment into (the entry's own lines, those belonging to what follows)."""
    lines = text.splitlines(keepends=True)
    cut = len(lines)
    for i, line in enumerate(lines[1:], 1):
        stripped = line.lstrip(" ")
        if stripped.startswith("#") and len(line) - len(stripped) < column:
            cut = i
            break
    # Blank lines before what follows (or at the very end) separate it: they move with it.
    while cut > 1 and lines[cut - 1].strip() == "":
        cut -= 1
    return "".join(lines[:cut]), "".join(lines[cut:])


def _column_of(container: Any) -> int:
    try:
        return int(container.lc.col)
    except (AttributeError, TypeError):
        return 0


def _take_tail(node: object, column: int) -> CommentToken | None:
    """Cut the part of ``node``'s trailing comment that belongs after it; the cut part."""
    holder = _last_comment_holder(node)
    if holder is None:
        return None
    container, key = holder
    token = _comment_of(container, key)
    if token is None:
        return None
    head, tail = _split_tail(token.value, column)
    if not tail:
        return None
    if not head.endswith("\n"):
        head += "\n"
    token.value = head
    return CommentToken(tail, token.start_mark, None)


def _give_tail(node: object, tail: CommentToken | None) -> None:
    """Hang a cut comment on ``node``'s last entry (the new end of the block)."""
    if tail is None:
        return
    holder = _last_comment_holder(node)
    if holder is None:
        return
    container, key = holder
    value = "\n" + tail.value  # the first line of a comment token ends the entry's own line
    existing = _comment_of(container, key)
    if existing is not None:
        existing.value = existing.value.rstrip("\n") + value
        return
    token = CommentToken(value, tail.start_mark, None)
    if isinstance(container, CommentedMap):
        container.ca.items[key] = [None, None, token, None]
    else:
        container.ca.items[key] = [token, None]


def _put(mapping: CommentedMap, key: str, value: object) -> None:
    """Add a key at the end of a mapping, below the last entry's own comment lines."""
    column = _column_of(mapping)
    if getattr(mapping.lc, "col", None) is None:
        # Made by an edit (an appended provider): a comment on it was moved there to
        # stay at the end of the block, so all of it moves on below the new key.
        column = 1 << 30
    tail = _take_tail(mapping, column) if len(mapping) else None
    mapping[key] = value
    _give_tail(mapping, tail)


def _append(seq: CommentedSeq, item: object) -> None:
    """Append to a block list, below the last item's own comment lines."""
    column = _column_of(seq[-1]) if len(seq) and isinstance(seq[-1], CommentedMap) else 1
    tail = _take_tail(seq, column) if len(seq) else None
    seq.append(item)
    _give_tail(seq, tail)


def _remove(container: Any, key: Any) -> None:
    """Remove an entry; if it was the last, its trailing "next section" comment moves up."""
    is_last = (isinstance(container, CommentedMap) and list(container.keys())[-1] == key) or (
        isinstance(container, CommentedSeq) and key in (-1, len(container) - 1)
    )
    column = _column_of(container[key]) if isinstance(container[key], CommentedMap) else 1
    if isinstance(container, CommentedMap):
        column = _column_of(container)
    tail = _take_tail(container[key], column) if is_last else None
    if tail is None and is_last:
        token = _comment_of(
            container, key if isinstance(container, CommentedMap) else len(container) - 1
        )
        if token is not None:
            _, after = _split_tail(token.value, column)
            tail = CommentToken(after, token.start_mark, None) if after else None
    del container[key]
    if len(container):
        # The new last entry drops its own trailing blank lines' duplicate.
        _give_tail(container, tail)


# ------------------------------------------------------------------ splicing


def _splice(original: str, before: str, after: str) -> str:
    """Apply the change ``before`` -> ``after`` (both ruamel's) to ``original`` (the operator's).

    ``before`` is ruamel's rendering of ``original`` unedited: where it equals
    ``original`` line for line, a line maps to one original line; where ruamel
    normalised something, a run of its lines maps to a run of the original's
    (a "gap"). Lines the edit leaves alone come out as in ``original``; a gap
    the edit touches, or that borders on it, comes out as ruamel renders it
    (so that a new line's indentation agrees with its neighbours').
    """
    o = original.splitlines(keepends=True)
    b = before.splitlines(keepends=True)
    a = after.splitlines(keepends=True)
    if o and not o[-1].endswith("\n"):
        o[-1] += "\n"
    # Map each line of b to its original: an int (the same line) or a gap id.
    line_of: list[int | None] = [None] * len(b)
    gap_of: list[int | None] = [None] * len(b)
    gaps: list[tuple[int, int, int, int]] = []  # (b1, b2, o1, o2)
    inserts: dict[int, tuple[int, int]] = {}  # original lines ruamel dropped, before b index
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, b, o, autojunk=False).get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                line_of[i1 + k] = j1 + k
        elif i1 == i2:
            inserts[i1] = (j1, j2)
        else:
            for k in range(i1, i2):
                gap_of[k] = len(gaps)
            gaps.append((i1, i2, j1, j2))
    out: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, b, a, autojunk=False).get_opcodes():
        if tag != "equal":
            out.extend(a[j1:j2])
            continue
        k = i1
        while k < i2:
            if k in inserts and k > i1:
                o1, o2 = inserts[k]
                out.extend(o[o1:o2])
            gap = gap_of[k]
            if gap is None:
                line = line_of[k]
                out.append(o[line] if line is not None else b[k])
                k += 1
                continue
            g1, g2, o1, o2 = gaps[gap]
            # Clean: inside this unchanged stretch, not touching an edit on either side
            # (an edit next to it is written in ruamel's layout; so must it be).
            inside = g1 >= i1 and g2 <= i2
            apart = (g1 > i1 or g1 == 0) and (g2 < i2 or g2 == len(b))
            if inside and apart and k == g1:
                out.extend(o[o1:o2])  # untouched: as the operator wrote it
                k = g2
            else:
                out.append(a[j1 + (k - i1)])  # touched: as ruamel renders it
                k += 1
        if i2 in inserts and i2 == len(b):
            o1, o2 = inserts[i2]
            out.extend(o[o1:o2])
    return "".join(out)


# --------------------------------------------------------------------- writing


def lock_path(path: Path) -> Path:
    """The lock file beside the config that every writer of it takes (``NAME.lock``)."""
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``NAME.lock`` beside ``path``.

    Opened read-only (``flock`` needs no write access) and owned like the file
    it guards (or its directory): ``sluice providers add`` run as root and the
    daemon run as its own user must both be able to take the same lock.
    """
    fd = os.open(lock_path(path), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        if os.geteuid() == 0:
            ref = os.stat(path if path.exists() else path.parent)
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (ref.st_uid, ref.st_gid):
                os.fchown(fd, ref.st_uid, ref.st_gid)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_atomically(path: Path, data: bytes, *, mode: int, uid: int, gid: int) -> None:
    """Temp file in the same directory, write, fsync, mode and owner, rename, fsync the dir."""
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # not root: the owner stays ours
                    os.fchown(f.fileno(), uid, gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@dataclass(frozen=True, slots=True)
class _Stat:
    mode: int = 0o640
    uid: int = field(default_factory=os.geteuid)
    gid: int = field(default_factory=os.getegid)


def write_atomic(
    path: str | os.PathLike[str],
    text: str,
    *,
    expect_digest: str | None,
    base_text: str | None = None,
) -> str:
    """Replace the config file with ``text`` if it is still the file of ``expect_digest``.

    Under an exclusive lock on ``NAME.lock`` (every writer takes it), the file
    is read again and its digest compared: a file changed since (a hand edit,
    another Save) refuses the write, with the difference from ``base_text``
    (the text the edit started from) when it is given. ``expect_digest``
    None: the file must not exist yet. Mode and owner are kept.

    Returns:
        The digest of the new file.

    Raises:
        EditRefused: the file changed on disk since it was read.
        OSError: it cannot be written.
    """
    p = Path(path)
    data = text.encode("utf-8")
    with _locked(p):
        try:
            current = p.read_bytes()
            st = p.stat()
            stat = _Stat(st.st_mode & 0o7777, st.st_uid, st.st_gid)
        except FileNotFoundError:
            current = None
            stat = _Stat()
        now = digest_of(current) if current is not None else None
        if now != expect_digest:
            diff = None
            if base_text is not None and current is not None:
                diff = unified_diff(
                    base_text.replace("\r\n", "\n"),
                    current.decode("utf-8", "replace").replace("\r\n", "\n"),
                    path=str(p),
                )
            raise EditRefused(
                f"{p} changed on disk since it was loaded; reload the page (or the command) "
                "and make the change again, so that nobody's edit is overwritten",
                diff=diff,
            )
        _replace_atomically(p, data, mode=stat.mode, uid=stat.uid, gid=stat.gid)
    return digest_of(data)


def secret_file_name(*parts: str) -> str:
    """A secrets file's name from its owner and key: ``provider-main-password``."""
    name = "-".join(re.sub(r"[^A-Za-z0-9_.-]", "_", p) for p in parts if p)
    return name.lstrip(".") or "secret"


def write_secret(
    secrets_dir: str | os.PathLike[str],
    name: str,
    value: str,
    *,
    owner: tuple[int, int] | None = None,
) -> Path:
    """Write a secret to a file of its own in ``secrets_dir``: mode 0600, atomically.

    The directory is made (0700) when missing, owned like its parent (the
    state directory, the daemon's); the file is owned by ``owner`` (uid, gid),
    by default the directory's owner: the daemon's user, also when the
    operator runs ``sluice`` as root. The value is written as given, with no
    newline added (a secret file holds exactly the secret).

    Returns:
        The file's absolute path (what the YAML's ``*_file`` key gets).

    Raises:
        ValueError: a name that is not a plain file name, or an empty value.
    """
    if not _SECRET_NAME.match(name):
        raise ValueError(f"{name!r} is not a plain file name")
    if not value:
        raise ValueError("an empty secret is no secret")
    directory = Path(secrets_dir).absolute()
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        parent = directory.parent.stat()
        with contextlib.suppress(PermissionError):
            os.chown(directory, parent.st_uid, parent.st_gid)
    if owner is None:
        st = directory.stat()
        owner = (st.st_uid, st.st_gid)
    path = directory / name
    with _locked(directory / ".secrets"):  # one lock for the directory: ".secrets.lock"
        _replace_atomically(path, value.encode("utf-8"), mode=0o600, uid=owner[0], gid=owner[1])
    return path


def load_with_text(
    path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[Config, str]:
    """``relay.config.load`` from one read of the file, and the text it read.

    The daemon keeps the text (and its digest) of what it runs: an edit
    compares the file on disk with it, and shows the difference when someone
    changed the file by hand and did not reload. One read, so the text is
    exactly what was validated.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(_MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}:1: (file): cannot read: {exc}"]) from None
    if len(raw) > _MAX_BYTES:
        raise ConfigError([f"{source}:1: (file): the file is larger than 1024 KiB"])
    cfg = loads(text, source=source, env=env, secrets=True)
    return resolve_paths(cfg, Path(source).resolve().parent), text
