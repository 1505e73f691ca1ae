"""Text XML from an app (a source NSC or manifest, an XML Info.plist), read by expat with everything hostile refused.

Expat (not xml.etree, not defusedxml) because the readers need line numbers
per element and nothing else; what defusedxml adds over expat is refusing
DTDs and entities, done here the same way: a DOCTYPE (or, for plists, a
DOCTYPE with an internal subset), any entity declaration and any external
entity stop the parse, so nothing is expanded (billion laughs) and nothing is
fetched (XXE: expat itself has no I/O, and no handler that could load one is
set). Work and memory are linear in the input: text arrives in pieces that
are joined once per element (not `+=`, which copies the whole text per piece
and made a `<domain>` of 1.6M newlines take 32 s), and elements and nesting
are bounded. Every refusal says file:line:column.
"""

from __future__ import annotations

from xml.parsers import expat

from tlsgate.apps.axml import Element
from tlsgate.apps.model import AppFormatError, short

MAX_DEPTH = 64
MAX_ELEMENTS = 100_000  # as the binary XML reader; a real NSC or manifest has tens to a few thousand
BUFFER = 1 << 20  # expat hands text over in pieces of up to this much, so a long text is a few calls


class _Refused(Exception):
    """A handler's refusal, raised through expat and turned into a located AppFormatError."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(message)
        self.where = f"{line}:{column + 1}"  # taken when refused: once expat has stopped, its position has moved on


def parse_xml_text(
    data: bytes,
    name: str,
    *,
    build: bool = True,
    doctype: str = "refuse",
    max_depth: int = MAX_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> Element | None:
    """Text XML -> Element tree with line numbers (or, build=False, only checked).

    `doctype="external"` admits a DOCTYPE that only names an external DTD, as
    every Info.plist has (`<!DOCTYPE plist PUBLIC ... "http://www.apple.com/DTDs/...">`:
    never fetched); an internal subset is refused either way.
    """
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.buffer_text = True
    parser.buffer_size = BUFFER
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[tuple[Element, list[str]]] = []
    roots: list[Element] = []
    count = 0

    def refuse(message: str) -> None:
        raise _Refused(message, parser.CurrentLineNumber, parser.CurrentColumnNumber)

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if len(stack) >= max_depth:
            refuse(f"elements nested too deeply (more than {max_depth} levels)")
        if count > max_elements:
            refuse(f"more than {max_elements} elements")
        if not build:
            stack.append((_NOTHING, []))
            return
        element = Element(tag.rpartition(" ")[2], {k.rpartition(" ")[2]: v for k, v in attrs.items()}, parser.CurrentLineNumber)
        (stack[-1][0].children if stack else roots).append(element)
        stack.append((element, []))

    def end(tag: str) -> None:
        element, pieces = stack.pop()
        if build and pieces:
            element.text = "".join(pieces)  # once: the pieces were collected, never concatenated one by one

    def text(chars: str) -> None:
        if stack and build:
            stack[-1][1].append(chars)

    def doctype_start(doctype_name: str, system_id: str | None, public_id: str | None, internal_subset: bool) -> None:
        if doctype == "refuse":
            refuse(f"DOCTYPE {short(doctype_name, 40)} is not accepted (no DTDs, no entities)")
        if internal_subset:
            refuse(f"DOCTYPE {short(doctype_name, 40)} has an internal subset; DTD declarations and entities are not accepted")

    def entity(*_: object) -> None:
        refuse("entity declarations are not accepted (no expansion, no external entities)")

    def external(*_: object) -> int:
        refuse("external entities are never loaded")
        return 0

    def skipped(entity_name: str, is_parameter: bool) -> None:
        # with a DOCTYPE naming an external DTD (every plist's), expat skips an undefined entity instead of failing
        refuse(f"undefined entity &{short(entity_name, 40)[1:-1]}; (only &lt; &gt; &amp; &apos; &quot; are known)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype_start
    parser.EntityDeclHandler = entity
    parser.UnparsedEntityDeclHandler = entity
    parser.NotationDeclHandler = entity
    parser.ExternalEntityRefHandler = external
    parser.SkippedEntityHandler = skipped
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise AppFormatError(f"{name}:{exc.where}: {exc}") from None
    except expat.ExpatError as exc:
        reason = expat.ErrorString(exc.code) if exc.code is not None else str(exc)
        raise AppFormatError(f"{name}:{exc.lineno}:{exc.offset + 1}: not well-formed XML: {reason}") from None
    except (ValueError, LookupError) as exc:  # pyexpat: a declared encoding it cannot read (multi-byte, unknown)
        raise AppFormatError(f"{name}:1:1: XML declares an encoding expat cannot read ({short(str(exc), 80)})") from None
    if not build:
        return None
    if len(roots) != 1:
        raise AppFormatError(f"{name}: no root element")
    return roots[0]


_NOTHING = Element("", {}, None)
