"""Fifty factual prompts whose next token the demo model (SmolLM2-135M-Instruct) predicts correctly, top-1, with
a single-token target: the prompt set of the integrated-gradients convergence study (``repro/ig_convergence.py``).

>>> from repro.facts import FACTS
>>> len(FACTS), FACTS[0]
(50, ('The capital of France is', ' Paris'))

Each pair was kept only if the target is one token of the demo tokenizer and the model's argmax (float32, CPU).
"""

from __future__ import annotations

FACTS: list[tuple[str, str]] = [
    ("The capital of France is", " Paris"),
    ("The capital of Japan is", " Tokyo"),
    ("The capital of Italy is", " Rome"),
    ("The capital of Germany is", " Berlin"),
    ("The capital of Spain is", " Madrid"),
    ("The capital of Russia is", " Moscow"),
    ("The capital of England is", " London"),
    ("The capital of China is", " Beijing"),
    ("The capital of Greece is", " Athens"),
    ("The capital of Canada is", " Ottawa"),
    ("The capital of Austria is", " Vienna"),
    ("The capital of Portugal is", " Lisbon"),
    ("The capital of Ireland is", " Dublin"),
    ("The capital of Norway is", " Oslo"),
    ("The capital of Sweden is", " Stockholm"),
    ("The capital of Kenya is", " Nairobi"),
    ("The capital of Denmark is", " Copenhagen"),
    ("The capital of the Netherlands is", " Amsterdam"),
    ("The capital of Hungary is", " Budapest"),
    ("The capital of South Korea is", " Seoul"),
    ("The Eiffel Tower is located in the city of", " Paris"),
    ("The Colosseum is located in the city of", " Rome"),
    ("The Statue of Liberty is located in the city of", " New"),
    ("The Louvre is located in the city of", " Paris"),
    ("The Kremlin is located in", " Moscow"),
    ("The Great Barrier Reef is located off the coast of", " Australia"),
    ("The chemical symbol for gold is", " Au"),
    ("The chemical symbol for iron is", " Fe"),
    ("The chemical symbol for sodium is", " Na"),
    ("The largest planet in the solar system is", " Jupiter"),
    ("The planet closest to the sun is", " Mercury"),
    ("The Earth revolves around the", " Sun"),
    ("The opposite of hot is", " cold"),
    ("The opposite of up is", " down"),
    ("A week has seven", " days"),
    ("There are twelve months in a", " year"),
    ("Monday, Tuesday,", " Wednesday"),
    ("One, two, three, four,", " five"),
    ("Ice is frozen", " water"),
    ("The author of Romeo and Juliet is William", " Shakespeare"),
    ("The theory of relativity was developed by Albert", " Einstein"),
    ("The first man on the moon was Neil", " Armstrong"),
    ("The official language of Mexico is", " Spanish"),
    ("People in France speak", " French"),
    ("People in Italy speak", " Italian"),
    ("The largest ocean on Earth is the", " Pacific"),
    ("The longest river in Africa is the", " Nile"),
    ("The tallest mountain in the world is Mount", " Everest"),
    ("The freezing point of water is zero degrees", " Celsius"),
    ("The Mona Lisa was painted by Leonardo da", " Vinci"),
]
