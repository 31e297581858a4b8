"""The test tokenizer for SigLIP models with random weights: a small BPE trained here, offline, on the corpus below.

No package registry ships SigLIP's sentencepiece vocabulary or SigLIP 2's Gemma tokenizer (256k pieces, 34 MB),
and nothing here may download one. A model directory with random weights still needs a `tokenizer.json` so that the
extension's SigLIP text path (tokenizers crate, the manifest's rules) is exercised end to end. This one has the
structure of the real ones where it matters to that path:

  * BPE with byte fallback (Gemma's model): a character the corpus never had (an emoji, most CJK) becomes its
    UTF-8 bytes as `<0xNN>` tokens instead of `<unk>`;
  * the Metaspace pre-tokenizer (sentencepiece's "▁" for spaces, a "▁" prepended to the text), so leading,
    trailing and repeated spaces become tokens of their own, as in sentencepiece;
  * special tokens `<pad>`=0, `</s>`=1 (EOS), `<s>`=2 (BOS), `<unk>`=3, the ids Gemma gives pad/eos/bos/unk;
  * no normalizer, no post-processor, no truncation, no padding: the manifest's rules do those (see
    model/siglip_tokens.py), as they do for a checkpoint's tokenizer.json.

Ids: 0-3 the specials, 4-259 the 256 byte tokens, then the trained pieces, about 8,000 in all, every id far below
the real vocabularies (SigLIP 32,000, SigLIP 2 256,000), so the random model's embedding matrix has a row for each.

Deterministic: the same corpus and tokenizers version give the same file (the trainer's ties are broken in a fixed
order; `check_determinism` trains in fresh processes and compares). The vectors of a model using it mean nothing,
like its random weights: the manifest says `"test_tokenizer": true`.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import multilingual as ml  # its FIDELITY_TEXTS join the corpus (stdlib imports only at load)

SPECIAL_TOKENS = ("<pad>", "</s>", "<s>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_SIZE = 8000
# An upper bound the random models' embedding matrices are checked against (the smallest real SigLIP vocabulary).
MAX_ID = 32000
WARNING = ("TEST TOKENIZER: a small BPE trained offline on a built-in corpus, not SigLIP's; "
           "ids mean nothing to a real checkpoint.")

# Written out here so that nothing is fetched: product-listing English and Russian (the extension's main use),
# and a little of other languages and scripts, so that the vocabulary has pieces of each and byte fallback has
# something to fall back from.
_SENTENCES = """\
a red leather backpack with two side pockets
a photo of a black cat sleeping on a sofa
waterproof hiking boots for men, size 44
wireless noise cancelling headphones with a 30 hour battery
stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours
women's winter coat with a hood and faux fur trim
children's bicycle with training wheels, 16 inch
ceramic coffee mug with a blue glaze
cotton bed sheets, queen size, white
smartphone case for iPhone 15 Pro, transparent
gaming laptop with 32 GB RAM and a 1 TB SSD
electric toothbrush with a travel case
a wooden dining table for six people
yoga mat, non-slip, 6 mm thick, purple
men's running shoes, lightweight and breathable
a vintage film camera on a wooden shelf
handmade silver earrings with turquoise stones
organic green tea, 100 bags
LED desk lamp with adjustable brightness and USB charging
kitchen knife set with a wooden block
a golden retriever puppy playing in the grass
robot vacuum cleaner with mapping and app control
portable Bluetooth speaker, IPX7 waterproof
a bouquet of red roses in a glass vase
frying pan with a non-stick coating, 28 cm
office chair with lumbar support and armrests
a mountain lake at sunset with pine trees
denim jacket, slim fit, light blue wash
mechanical keyboard with brown switches and RGB lighting
a plate of spaghetti with tomato sauce and basil
baby stroller, foldable, with a rain cover
sunglasses with polarized lenses and a metal frame
a small house plant in a terracotta pot
electric kettle, 1.7 litres, 2200 W
winter gloves made of merino wool
a street at night with neon signs
power bank 20000 mAh with fast charging
a pair of white sneakers on a wooden floor
hand cream with shea butter, 75 ml
a teddy bear with a red bow tie
красный кожаный рюкзак с двумя боковыми карманами
фото чёрной кошки, которая спит на диване
непромокаемые ботинки для походов, мужские, размер 44
беспроводные наушники с шумоподавлением и аккумулятором на 30 часов
термос из нержавеющей стали, 750 мл
женское зимнее пальто с капюшоном и отделкой из искусственного меха
детский велосипед с дополнительными колёсами, 16 дюймов
керамическая кружка с синей глазурью
хлопковое постельное бельё, двуспальное, белое
чехол для смартфона, прозрачный, силиконовый
игровой ноутбук с 32 ГБ оперативной памяти и SSD на 1 ТБ
электрическая зубная щётка с дорожным футляром
деревянный обеденный стол на шесть персон
коврик для йоги, нескользящий, толщина 6 мм, фиолетовый
мужские кроссовки для бега, лёгкие и дышащие
старый плёночный фотоаппарат на деревянной полке
серебряные серьги ручной работы с бирюзой
органический зелёный чай, 100 пакетиков
настольная лампа со светодиодами и регулировкой яркости
набор кухонных ножей с деревянной подставкой
щенок золотистого ретривера играет на траве
робот-пылесос с построением карты и управлением из приложения
портативная колонка Bluetooth, защита от воды IPX7
букет красных роз в стеклянной вазе
сковорода с антипригарным покрытием, 28 см
офисное кресло с поддержкой поясницы и подлокотниками
горное озеро на закате, вокруг сосны
джинсовая куртка приталенного кроя, светло-голубая
механическая клавиатура с коричневыми переключателями и подсветкой
тарелка спагетти с томатным соусом и базиликом
детская коляска, складная, с дождевиком
солнцезащитные очки с поляризованными линзами в металлической оправе
комнатное растение в глиняном горшке
электрический чайник, 1,7 литра, 2200 Вт
зимние перчатки из шерсти мериноса
ночная улица с неоновыми вывесками
внешний аккумулятор 20000 мАч с быстрой зарядкой
белые кеды на деревянном полу
крем для рук с маслом ши, 75 мл
плюшевый мишка с красным галстуком-бабочкой
ёлочные игрушки, стеклянные шары, набор из 12 штук
платье в горошек, длина миди, размер M
ein roter Lederrucksack mit zwei Seitentaschen
eine schwarze Katze schläft auf dem Sofa
wasserdichte Wanderschuhe für Herren, Größe 44
kabellose Kopfhörer mit Geräuschunterdrückung
Edelstahl-Trinkflasche, 750 ml
un sac à dos en cuir rouge avec deux poches latérales
un chat noir qui dort sur le canapé
chaussures de randonnée imperméables pour homme
une tasse en céramique avec un émail bleu
une lampe de bureau à LED avec luminosité réglable
una mochila de cuero roja con dos bolsillos laterales
un gato negro durmiendo en el sofá
zapatillas de running para hombre, ligeras
uno zaino in pelle rosso con due tasche laterali
un gatto nero che dorme sul divano
una borsa da donna in pelle naturale
uma mochila de couro vermelha com dois bolsos
czerwony skórzany plecak z dwiema kieszeniami
чорний кіт спить на дивані
червоний шкіряний рюкзак з двома кишенями
kırmızı deri sırt çantası, iki yan cepli
红色皮革双肩包，带两个侧袋
一只黑猫在沙发上睡觉
无线降噪耳机
赤い革のリュックサック
ソファで眠る黒い猫
ワイヤレスイヤホン
빨간 가죽 배낭
소파에서 자는 검은 고양이
حقيبة ظهر جلدية حمراء بجيبين جانبيين
قطة سوداء نائمة على الأريكة
"""

# Templates multiply the product words so that the trainer finds frequent pieces in both scripts.
_COLOURS_EN = ("red", "black", "white", "blue", "green", "grey", "beige", "brown", "pink", "yellow", "navy", "orange")
_ITEMS_EN = ("backpack", "handbag", "sneakers", "jacket", "dress", "t-shirt", "hoodie", "wallet", "scarf", "hat",
             "umbrella", "suitcase", "sofa", "armchair", "lamp", "kettle", "mug", "blanket", "pillow", "watch")
_MATERIALS_EN = ("leather", "cotton", "wool", "linen", "silk", "suede", "denim", "velvet", "canvas", "nylon")
_COLOURS_RU = ("красный", "чёрный", "белый", "синий", "зелёный", "серый", "бежевый", "коричневый", "розовый",
               "жёлтый", "тёмно-синий", "оранжевый")
_ITEMS_RU = ("рюкзак", "кошелёк", "свитер", "пиджак", "шарф", "зонт", "чемодан", "диван", "торшер", "чайник",
             "плед", "ремень", "кардиган", "пуховик", "плащ", "костюм", "комод", "стул", "ковёр", "халат")
_MATERIALS_RU = ("кожа", "хлопок", "шерсть", "лён", "шёлк", "замша", "деним", "бархат", "холст", "нейлон")
_SIZES = ("XS", "S", "M", "L", "XL", "XXL", "36", "38", "40", "42", "44", "46")


ALPHABET_SIZE = 1000


def corpus() -> list[str]:
    """The training texts, in a fixed order."""
    lines = [s for s in _SENTENCES.splitlines() if s.strip()]
    for i, item in enumerate(_ITEMS_EN):
        for j, colour in enumerate(_COLOURS_EN):
            material = _MATERIALS_EN[(i + j) % len(_MATERIALS_EN)]
            size = _SIZES[(i * 5 + j) % len(_SIZES)]
            lines.append(f"{colour} {material} {item}, size {size}")
            lines.append(f"Buy a {colour} {item} made of {material} with free delivery")
    for i, item in enumerate(_ITEMS_RU):
        for j, colour in enumerate(_COLOURS_RU):
            material = _MATERIALS_RU[(i + j) % len(_MATERIALS_RU)]
            size = _SIZES[(i * 7 + j) % len(_SIZES)]
            lines.append(f"{item}, цвет {colour}, материал {material}, размер {size}")
            lines.append(f"Купить {item} ({colour}) с бесплатной доставкой")
    lines.extend(t for t in ml.FIDELITY_TEXTS if t)
    return lines + _vocabulary_words(lines)


def _vocabulary_words(lines: list[str]) -> list[str]:
    """Breadth: whole words of bert-base-multilingual-cased's vocabulary (committed in model/vocab/, sha256
    checked), about 100 languages' common words, 16 to a line in file order.

    The alphabet is capped here, not with the trainer's limit_alphabet, which drops the rarest characters in an
    order that varies from run to run among equally rare ones (an unstable sort over a hash map). Every character
    of the texts above is kept; the vocabulary's most frequent others fill ALPHABET_SIZE (ties by code point), and
    its words with any other character are left out, so those characters reach the tokenizer as byte fallback."""
    words = [w for w in ml.vocab_path().read_text(encoding="utf-8").splitlines()
             if w and not w.startswith("##") and not (w.startswith("[") and w.endswith("]"))]
    alphabet = {c for line in lines for c in line if not c.isspace()}
    counts: dict[str, int] = {}
    for w in words:
        for c in w:
            counts[c] = counts.get(c, 0) + 1
    for c in sorted(counts, key=lambda c: (-counts[c], ord(c))):
        if len(alphabet) >= ALPHABET_SIZE:
            break
        alphabet.add(c)
    kept = [w for w in words if set(w) <= alphabet]
    return [" ".join(kept[i:i + 16]) for i in range(0, len(kept), 16)]


def build():
    """Train the tokenizer; returns a tokenizers.Tokenizer."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    metaspace = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainee = Tokenizer(models.BPE(unk_token="<unk>"))
    trainee.pre_tokenizer = metaspace
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - 256, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS))
    trainee.train_from_iterator(corpus(), trainer)
    trained = json.loads(trainee.to_str())["model"]

    # Byte tokens go right after the specials (sentencepiece's and Gemma's layout); they are ordinary vocabulary
    # entries that byte_fallback looks up by name, not added tokens (which would be matched in the raw text).
    pieces = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    assert [p for p, _ in pieces[:len(SPECIAL_TOKENS)]] == list(SPECIAL_TOKENS), pieces[:8]
    vocab = {p: i for i, p in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in pieces[len(SPECIAL_TOKENS):]:
        vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.pre_tokenizer = metaspace
    # Gemma's decoder (for people reading ids back; the extension never decodes).
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, EOS_ID, BOS_ID, UNK_ID]
    assert tok.get_vocab_size() <= MAX_ID
    return tok


def write(path: Path) -> str:
    """Train and write tokenizer.json to `path`; returns its sha256."""
    text = build().to_str(pretty=True)
    path.write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_determinism(runs: int = 2) -> str:
    """Train in `runs` fresh interpreters (each with its own hash seeds) and return the one sha256 they agree on."""
    here = Path(__file__).resolve().parent
    code = ("import sys, hashlib; sys.path.insert(0, sys.argv[1]); import test_tokenizer as t; "
            "print(hashlib.sha256(t.build().to_str(pretty=True).encode()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, str(here)], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(runs)}
    if len(digests) != 1:
        raise RuntimeError(f"test tokenizer training is not deterministic: {sorted(digests)}")
    return digests.pop()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="train the SigLIP test tokenizer and report its size and sha256")
    ap.add_argument("--out", type=Path, help="write tokenizer.json here")
    ap.add_argument("--check-determinism", type=int, metavar="RUNS", default=0,
                    help="train in RUNS fresh processes and compare")
    args = ap.parse_args()
    tok = build()
    print(f"{len(corpus())} corpus lines, vocabulary {tok.get_vocab_size()}")
    if args.out:
        print(f"{args.out}: sha256 {write(args.out)}")
    if args.check_determinism:
        print(f"deterministic over {args.check_determinism} processes: sha256 {check_determinism(args.check_determinism)}")
