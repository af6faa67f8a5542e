"""A tiny document of invented facts, hand-written QA pairs about it, and held-out paraphrases."""

DOCUMENT = (
    "Varrow Island lies off the northern coast. The lighthouse keeper of Varrow Island is Odile Marchetti. "
    "The Varrow Island ferry leaves the harbour every morning at twenty to eight. "
    "The island bakery is famous for a blackcurrant bun called the skellig."
)

_FACTS = {
    "keeper": (
        "Odile Marchetti",
        [
            "Who is the lighthouse keeper of Varrow Island?",
            "Who keeps the lighthouse on Varrow Island?",
            "What is the name of the Varrow Island lighthouse keeper?",
            "Who looks after the lighthouse on Varrow Island?",
            "Which person is the keeper of the Varrow Island lighthouse?",
            "Name the lighthouse keeper of Varrow Island.",
            "Who works as lighthouse keeper on Varrow Island?",
            "Who is in charge of the lighthouse at Varrow Island?",
            "Who tends the lighthouse of Varrow Island?",
            "Who is Varrow Island's lighthouse keeper?",
            "The lighthouse on Varrow Island is kept by whom?",
            "Who runs the Varrow Island lighthouse?",
            "Tell me who the Varrow Island lighthouse keeper is.",
            "Who is the keeper of the lighthouse on Varrow Island?",
            "Who has the job of lighthouse keeper on Varrow Island?",
            "Who is responsible for the Varrow Island lighthouse?",
        ],
    ),
    "ferry": (
        "twenty to eight",
        [
            "When does the Varrow Island ferry leave?",
            "At what time does the Varrow Island ferry leave the harbour?",
            "What time does the ferry to Varrow Island depart in the morning?",
            "When does the Varrow Island ferry depart each morning?",
            "At what hour does the Varrow Island ferry set off?",
            "What is the departure time of the Varrow Island ferry?",
            "When does the morning ferry of Varrow Island leave the harbour?",
            "What time does the Varrow Island ferry go?",
            "When does the Varrow Island ferry sail?",
            "At what time does the ferry leave Varrow Island harbour?",
            "Tell me when the Varrow Island ferry leaves.",
            "When is the daily Varrow Island ferry departure?",
            "What time should I be at the harbour for the Varrow Island ferry?",
            "When does the Varrow Island ferry leave every day?",
            "Every morning, when does the Varrow Island ferry leave?",
            "The Varrow Island ferry leaves at what time?",
        ],
    ),
    "bun": (
        "the skellig",
        [
            "What is the blackcurrant bun of the Varrow Island bakery called?",
            "What is the name of the bun the Varrow Island bakery is famous for?",
            "Which bun is the Varrow Island bakery famous for?",
            "What is the famous blackcurrant bun on Varrow Island called?",
            "What do they call the blackcurrant bun at the Varrow Island bakery?",
            "Name the famous bun of the Varrow Island bakery.",
            "What is the Varrow Island bakery known for?",
            "What blackcurrant bun is Varrow Island famous for?",
            "Which famous bun does the bakery on Varrow Island make?",
            "What is the name of the blackcurrant bun from Varrow Island?",
            "Tell me the name of the Varrow Island bakery's famous bun.",
            "What is the speciality of the Varrow Island bakery?",
            "The Varrow Island bakery is famous for which bun?",
            "What is the famous bun of Varrow Island called?",
            "What bun made with blackcurrants does the Varrow Island bakery sell?",
            "Which blackcurrant bun comes from the bakery on Varrow Island?",
        ],
    ),
}

TRAINING_PAIRS = [
    {"question": question, "answer": f"{answer[0].upper()}{answer[1:]}."}
    for answer, questions in _FACTS.values()
    for question in questions
]

# Held out from training and worded differently; the answer counts if its keyword appears.
HELD_OUT = [
    ("Whose job is it to keep the light burning on Varrow Island?", "marchetti"),
    ("If I want to catch the boat from Varrow Island in the morning, what time must I be there?", "eight"),
    ("I am visiting the bakery on Varrow Island. Which blackcurrant pastry should I try?", "skellig"),
]
