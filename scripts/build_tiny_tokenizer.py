"""Build the byte-level BPE tokenizer of ``model=tiny_llama`` into ``src/finexp/assets/tiny_llama_tokenizer/``.

    python scripts/build_tiny_tokenizer.py            # rebuild the committed files (same bytes every time)
    python scripts/build_tiny_tokenizer.py --check    # exit 1 if the committed files differ from a fresh build

The tokenizer is real but small: GPT-2-style byte-level BPE (every byte is in the base alphabet, so any Unicode text
round-trips: "€1.2bn loss; EBITDA −3%") trained on the few hundred short financial and general English sentences
this script writes itself, with Llama's special tokens (``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, ``<pad>`` 3), chat role
markers (``<|system|>``, ``<|user|>``, ``<|assistant|>``) and a Jinja chat template. Encoding prepends ``<s>`` (as
Llama's does); padding is on the right. The output is a directory ``AutoTokenizer.from_pretrained`` reads without
a network; ``conf/model/tiny_llama.yaml`` points at it. The files are data: rebuild and commit them when this script
changes.
"""

from __future__ import annotations

import argparse
import filecmp
import itertools
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

OUT = Path(__file__).resolve().parents[1] / "src" / "finexp" / "assets" / "tiny_llama_tokenizer"
VOCAB_SIZE = 1536  # an upper bound: bytes (256) + specials (7) + merges; the corpus runs out of pairs first
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
# Each message: its role marker, a newline, the content, the end token. add_generation_prompt opens the assistant
# turn, so a model's answer starts right after "<|assistant|>\n" and ends with </s>.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

SENTENCES = [
    "The company reported a net loss of €1.2bn for the quarter.",
    "EBITDA fell −3% year on year, missing analyst estimates.",
    "Revenue rose 12% to $4.5 billion, beating the consensus forecast.",
    "Shares rallied after strong earnings and a raised dividend.",
    "Shares slumped on weak guidance and falling margins.",
    "The central bank kept interest rates unchanged at 4.25%.",
    "Inflation eased to 2.1% in March, below expectations.",
    "The board approved a share buyback of up to £500m.",
    "Moody's downgraded the bonds to junk status.",
    "S&P affirmed the AA rating with a stable outlook.",
    "Operating cash flow improved despite higher capital expenditure.",
    "The merger is expected to close in the second half of 2025.",
    "Net debt to EBITDA stood at 2.4x at year end.",
    "Earnings per share were 1.05, up from 0.87 a year earlier.",
    "The stock is trading flat ahead of the annual meeting.",
    "Management reaffirmed its full-year guidance.",
    "Trading volume was in line with the 30-day average.",
    "The bank set aside more provisions for bad loans.",
    "Credit card delinquencies rose for a third straight month.",
    "The fund's assets under management reached ¥3.2tn.",
    "Oil prices jumped 5% after supply cuts were announced.",
    "Gold hit a record high as the dollar weakened.",
    "Bond yields climbed as investors priced in more rate hikes.",
    "The IPO was priced at the top of the range.",
    "The startup raised $20m in a Series B round.",
    "Customers can reset their PIN in the mobile app.",
    "Freeze the card in the app and call us if it was stolen.",
    "The daily transfer limit is five thousand euros.",
    "Please order a new card in the app.",
    "What is the sentiment of this news?",
    "Please choose an answer from negative, neutral, positive.",
    "Instruction: classify the headline. Input: profit beats forecast. Answer: positive",
    "You are a helpful financial analyst.",
    "Summarize the earnings call in one sentence.",
    "The quick brown fox jumps over the lazy dog.",
    "It was a sunny day, and the market was quiet.",
    "Hello, how can I help you today?",
    "Thank you for your question; here is the answer.",
    "Prices are shown in USD, EUR, GBP and JPY.",
    "Café owners in Zürich saw sales grow 8 % — a strong year.",
    "The regulator fined the lender for weak anti-money-laundering controls.",
    "Mortgage approvals dropped to their lowest level since 2012.",
    "Retail sales surprised to the upside in December.",
    "Unemployment held steady while wages kept rising.",
    "The government issued new ten-year bonds at a yield of 3.8%.",
    "Analysts expect a recession in the euro area next year.",
    "The currency weakened against the dollar after the election.",
    "Quarterly free cash flow turned negative for the first time.",
    "The insurer paid out record claims after the storms.",
    "Its loan book grew faster than deposits.",
    "The auditors raised concerns about going-concern risk.",
    "Investors sold technology stocks and bought utilities.",
    "Volatility spiked as markets opened lower on Monday.",
    "The pension fund increased its allocation to equities.",
    "A weaker pound lifted exporters' shares in London.",
    "The airline cut capacity because fuel costs soared.",
    "Supply chain problems delayed deliveries by several weeks.",
    "The retailer will close forty stores and cut jobs.",
    "Electric vehicle sales doubled from a year ago.",
    "Semiconductor demand slowed after two years of growth.",
    "The court ruled in favour of the shareholders.",
    "Private equity firms agreed to buy the software maker.",
    "The hedge fund returned 14% net of fees.",
    "Consumer confidence improved for the fourth month.",
    "Housing starts declined as borrowing costs rose.",
    "The chief executive will step down at the end of June.",
    "Please send the invoice by Friday so we can pay on time.",
    "My account was charged twice for the same purchase.",
    "How do I open a savings account online?",
    "Interest is paid monthly into your current account.",
    "The weather in Paris was cold and rainy this week.",
    "She read the report carefully before the meeting started.",
    "We will review the results and come back to you.",
    "Children played in the park while their parents talked.",
    "The train was late, so he took a taxi to work.",
    "Good morning! The office opens at nine o'clock.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 2025.",
    "Symbols: € $ £ ¥ % + − = < > / & @ # ( ) [ ] { } ' \" ...",
]
COMPANIES = ["ACME", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne"]
BULLISH = [
    "shares rally after strong earnings",
    "profit beats forecast",
    "stock upgraded to buy",
    "revenue growth accelerates",
    "dividend raised again",
    "posts record quarterly profit",
    "margins widen on cost cuts",
]
BEARISH = [
    "shares slump on weak guidance",
    "loss widens as sales fall",
    "stock downgraded to sell",
    "revenue misses estimates",
    "dividend cut amid losses",
    "issues profit warning",
    "faces probe over accounting",
]
NEUTRAL = [
    "shares flat ahead of results",
    "annual meeting scheduled for may",
    "board names new auditor",
    "trading volume in line with average",
    "company reaffirms guidance",
    "to report results on thursday",
    "appoints new chief financial officer",
]
WORDS = ["positive", "negative", "neutral", "bullish", "bearish", "up", "down", "flat", "yes", "no"]
AMOUNTS = ["€1.2bn", "$350m", "£4.1bn", "¥90bn", "2.5%", "−3%", "+7%", "0.4 pts", "12 bps", "1,250"]


def corpus() -> list[str]:
    """The training sentences: the fixed ones, every company with every headline, and amounts in context."""
    lines = list(SENTENCES)
    for company, phrase in itertools.product(COMPANIES, BULLISH + BEARISH + NEUTRAL):
        lines.append(f"{company} {phrase}")
    for company, amount in itertools.product(COMPANIES, AMOUNTS):
        lines.append(f"{company} reported a change of {amount} in quarterly revenue.")
    lines += [f"Answer: {word}" for word in WORDS] + [f"The answer is {word}." for word in WORDS]
    return lines


def build(out: Path) -> None:
    """Train the BPE on :func:`corpus` and save a transformers tokenizer directory into ``out``."""
    tokenizer = Tokenizer(models.BPE(unk_token=None))  # byte-level: no byte is unknown
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]),
        ]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL[4:],
        padding_side="right",
        model_max_length=512,  # conf/model/tiny_llama.yaml's max_position_embeddings
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    portable(out)


def portable(out: Path) -> None:
    """Rewrite ``tokenizer_config.json`` in the layout transformers 4.45+ and 5 both read: the generic fast class,
    ``additional_special_tokens`` and the chat template inline (transformers 5 alone writes ``chat_template.jinja``,
    ``extra_special_tokens`` and its ``TokenizersBackend`` class name)."""
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("backend", None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "extra_special_tokens" in config:
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    config["chat_template"] = CHAT_TEMPLATE
    (out / "chat_template.jinja").unlink(missing_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"output directory (default {OUT})")
    parser.add_argument("--check", action="store_true", help="compare a fresh build with --out instead of writing")
    args = parser.parse_args()
    if not args.check:
        build(args.out)
        print(f"wrote {sorted(p.name for p in args.out.iterdir())} to {args.out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        names = sorted(p.name for p in Path(tmp).iterdir())
        _, mismatch, errors = filecmp.cmpfiles(Path(tmp), args.out, names, shallow=False)
    if mismatch or errors:
        print(f"{args.out} differs from a fresh build: {mismatch + errors}", file=sys.stderr)
        sys.exit(1)
    print(f"{args.out} matches a fresh build ({', '.join(names)})")


if __name__ == "__main__":
    main()
