"""The instructions the project writes for distilling SmolLM2-135M-Instruct into its draft.

Programmatic variety: each family is a list of phrasings (templates) and a list of topics. A
template or a topic is held out by a hash of its text, and an instruction is held out only when both
its phrasing and its topic are: training never sees a held-out phrasing nor a held-out topic, so the
held-out set measures the draft on new phrasings of new topics.
"""

from __future__ import annotations

import hashlib
import itertools

CODE_TASKS = [
    "reverse a string", "check whether a number is prime", "count the vowels in a string",
    "find the largest number in a list", "remove duplicates from a list while keeping order",
    "merge two sorted lists", "compute the factorial of a number", "read a text file line by line",
    "count how often each word appears in a text", "check whether a string is a palindrome",
    "flatten a nested list", "compute the Fibonacci numbers up to n", "sort a list of dictionaries by a key",
    "convert Celsius to Fahrenheit", "find the second largest number in a list", "validate an email address",
    "split a list into chunks of size n", "compute the average of a list of numbers",
    "find the common elements of two lists", "capitalize the first letter of every word",
    "parse a date string into a datetime", "write a list of rows to a CSV file", "read a JSON file",
    "generate a random password", "compute the greatest common divisor of two numbers",
    "check whether two strings are anagrams", "rotate a list by k positions", "transpose a matrix",
    "implement binary search", "implement a simple stack class", "implement a queue with two stacks",
    "count the lines in a file", "find all files with a given extension in a folder",
    "measure how long a function takes", "retry a function call when it raises an exception",
    "compute the sum of the digits of a number", "convert a number to binary", "find the mode of a list",
    "group a list of words by their first letter", "replace every space in a string with an underscore",
    "build a dictionary from two lists", "invert a dictionary", "check whether a year is a leap year",
    "compute the length of the longest word in a sentence", "remove punctuation from a string",
    "download a web page with urllib", "make a simple command-line argument parser",
    "implement bubble sort", "find the index of an item in a list", "compute the power set of a list",
    "calculate compound interest", "convert a list of strings to integers", "zip two lists into pairs",
    "print a multiplication table", "find prime numbers with the sieve of Eratosthenes",
    "count the uppercase letters in a string", "compute the dot product of two vectors",
    "check whether a list is sorted", "truncate a string to a maximum length",
    "write a decorator that logs function calls", "use a context manager to open a file",
]

CODE_TEMPLATES = [
    "Write a Python function to {t}.", "How do I {t} in Python?", "Show me Python code to {t}.",
    "In Python, what is the simplest way to {t}?", "Can you write a short Python program to {t}?",
    "I need a Python snippet to {t}. Please explain it briefly.", "Give me an example in Python of how to {t}.",
    "Write Python code that can {t}, with a docstring.",
]

CONCEPTS = [
    "photosynthesis", "how a hash table works", "recursion", "the water cycle", "inflation",
    "how vaccines work", "what a neural network is", "the difference between a list and a tuple in Python",
    "gravity", "the greenhouse effect", "how the internet works", "what an API is", "compound interest",
    "the theory of evolution", "how a computer stores numbers", "what a variable is in programming",
    "why the sky is blue", "how batteries work", "supply and demand", "the difference between weather and climate",
    "what DNA is", "how a search engine works", "object-oriented programming", "what a database index is",
    "how airplanes fly", "the French Revolution", "what machine learning is", "how the heart works",
    "what an operating system does", "the difference between HTTP and HTTPS", "what a black hole is",
    "how plants grow", "what version control is", "the scientific method", "what a prime number is",
    "how memory works in the brain", "what a function is in programming", "the phases of the moon",
    "how solar panels work", "what an algorithm is", "the immune system", "how encryption works",
    "what a cloud server is", "the difference between RAM and storage", "why exercise is good for you",
    "how earthquakes happen", "what a recipe for good sleep looks like", "what Big O notation means",
    "how a bill becomes a law", "what a compiler does", "the causes of the seasons",
]

CONCEPT_TEMPLATES = [
    "Explain {t} in simple terms.", "What is {t}?", "Can you describe {t} briefly?",
    "Give me a short explanation of {t}.", "I'm a beginner. What should I know about {t}?",
    "Explain {t} to a ten-year-old.", "Help me understand {t}.", "Summarize {t} in a few sentences.",
]

TEXTS = [
    "The meeting on Tuesday was moved to Thursday because the projector in room 4 is broken. Everyone "
    "should bring their laptop, and the slides will be shared by email before the meeting.",
    "Our city library has started lending tools as well as books. Members can borrow drills, ladders and "
    "garden equipment for up to a week. The service is free, but a deposit is needed for larger items.",
    "I tried the new cafe on Main Street yesterday. The coffee was excellent and not too expensive, but the "
    "music was so loud that I could not hear my friend talking.",
    "Regular walking lowers the risk of heart disease, improves mood and helps people sleep better. Experts "
    "suggest at least thirty minutes a day, which can be split into shorter walks.",
    "The software update fixes a bug that made the app crash when photos were uploaded. It also adds a dark "
    "mode and makes the search faster. Users should restart the app after installing it.",
    "Bees are important for farming because they pollinate many crops. In recent years their numbers have "
    "fallen because of pesticides, disease and the loss of wild flowers.",
    "Hi team, the quarterly report is due next Friday. Please send me your numbers by Wednesday so that I "
    "have time to check them. Let me know if anything is unclear.",
    "The museum will be closed for renovation from March to June. During this time, some of its paintings "
    "will be shown in the town hall, and guided tours will continue online.",
    "Learning a language takes time. Practising a little every day works better than studying for hours once "
    "a week, and speaking with native speakers helps the most.",
    "The train was delayed by forty minutes because of a signal failure. Passengers were offered free drinks, "
    "and those who missed their connection could use their ticket on the next train.",
    "Plastic waste in the oceans harms fish, birds and turtles. Many countries have banned single-use bags, "
    "and some companies now make packaging from paper or plants instead.",
    "my computer is really slow since last week and i dont know why, it takes five minutes to start and the "
    "fan is very loud all the time",
    "The company had its best year so far. Sales grew by twenty percent, mostly because of strong demand in "
    "Asia, and the number of employees rose from 200 to 260.",
    "Please remember to water the plants while I am away. The big one in the kitchen needs water twice a "
    "week, but the cactus only needs it once a month.",
    "Scientists have found a new species of frog in the rainforest. It is smaller than a coin and its skin "
    "changes colour depending on the temperature.",
    "The recipe is simple: mix flour, eggs and milk, let the batter rest for ten minutes, then cook thin "
    "pancakes in a hot pan with a little butter.",
]

CODE_SNIPPETS = [
    "def f(x):\n    r = []\n    for i in x:\n        if i % 2 == 0:\n            r.append(i * i)\n    return r",
    "def avg(l):\n    s = 0\n    for n in l:\n        s = s + n\n    return s / len(l)",
    "names = ['ann', 'bob', 'cy']\nfor i in range(len(names)):\n    print(i, names[i])",
    "def get(d, k):\n    if k in d:\n        return d[k]\n    else:\n        return None",
    "f = open('data.txt')\nlines = f.readlines()\nf.close()\nprint(len(lines))",
    "def is_even(n):\n    if n % 2 == 0:\n        return True\n    return False",
    "total = 0\nfor word in text.split():\n    total += len(word)\nprint(total / len(text.split()))",
    "def fact(n):\n    if n == 0:\n        return 1\n    return n * fact(n - 1)",
    "result = {}\nfor w in words:\n    if w in result:\n        result[w] += 1\n    else:\n        result[w] = 1",
    "def c2f(c):\n    return c * 9 / 5 + 32\n\nprint(c2f(20))",
]

TEXT_TEMPLATES = [
    "Summarize the following text in one sentence:\n\n{t}", "Rewrite this text to sound more formal:\n\n{t}",
    "Make this text simpler, for a child:\n\n{t}", "Fix the grammar and spelling of this text:\n\n{t}",
    "List the main points of this text:\n\n{t}", "Give this text a short title:\n\n{t}",
    "Rewrite the following in a friendly tone:\n\n{t}", "What is this text about?\n\n{t}",
]

CODE_EDIT_TEMPLATES = [
    "Add comments to this Python code:\n\n```python\n{t}\n```", "Explain what this code does:\n\n```python\n{t}\n```",
    "Make this Python code more Pythonic:\n\n```python\n{t}\n```",
    "Rename the variables in this code so that it is easier to read:\n\n```python\n{t}\n```",
    "Add type hints to this function:\n\n```python\n{t}\n```", "Is there a bug in this code?\n\n```python\n{t}\n```",
    "Write a unit test for this code:\n\n```python\n{t}\n```",
]

LIST_TOPICS = [
    "tips for staying focused while studying", "healthy breakfast ideas", "uses of Python dictionaries",
    "ways to save money", "good habits for programmers", "things to pack for a camping trip",
    "benefits of reading books", "ideas for a rainy day", "ways to reduce stress", "common Python mistakes",
    "questions to ask in a job interview", "houseplants that are easy to care for", "fun facts about space",
    "ways to learn a new language", "tips for writing clear emails", "uses of the command line",
    "hobbies you can start at home", "ways to be more productive in the morning", "famous scientists",
    "tips for a first presentation", "vegetables that grow in pots", "reasons to learn programming",
    "board games for families", "ways to make a website faster", "classic novels worth reading",
    "tips for keeping a clean kitchen", "features of a good password", "Python libraries for data analysis",
]

LIST_TEMPLATES = [
    "List five {t}.", "Give me three {t}.", "What are some {t}?", "Name a few {t}, with one line on each.",
    "Can you suggest some {t}?", "Make a short bulleted list of {t}.",
]

HOWTOS = [
    "make a cup of tea", "plant tomatoes", "write a good email subject line", "change a flat bicycle tyre",
    "start running as a beginner", "prepare for an exam", "set up a Python virtual environment",
    "make a budget", "clean a laptop keyboard", "write a short story", "learn to touch type",
    "cook rice", "take better photos with a phone", "install a Python package with pip",
    "make a simple website", "organize a small party", "back up the files on a computer",
    "write a cover letter", "remember names better", "make bread at home", "use git to save my work",
    "fall asleep faster", "start a vegetable garden", "give useful feedback to a colleague",
    "debug a Python program", "keep a journal", "make a paper airplane", "read a research paper",
]

HOWTO_TEMPLATES = [
    "How do I {t}?", "Give me step-by-step instructions to {t}.", "What's the best way to {t}?",
    "Can you explain how to {t}?", "I want to {t}. Where do I start?", "Write a short guide on how to {t}.",
]

CHAT = [
    "Hi! How are you today?", "Can you tell me a joke?", "What can you help me with?", "Tell me a fun fact.",
    "I'm bored. Any ideas?", "What's a good name for a cat?", "Write a short poem about the sea.",
    "What should I cook for dinner tonight?", "Can you recommend a good book?", "Say something encouraging.",
    "What's the capital of Australia?", "How many days are there in a leap year?", "Who wrote Romeo and Juliet?",
    "Write a haiku about autumn.", "What is 15 times 12?", "Give me a riddle.", "Is a tomato a fruit?",
    "What is your name?", "Describe a perfect weekend.", "Write a two-line thank-you note to a friend.",
    "Which is bigger, the sun or the moon?", "What language is spoken in Brazil?", "Suggest a name for a bakery.",
    "Write a limerick about a programmer.", "How far is the moon from the Earth?", "What is the boiling point of water?",
    "Tell me about yourself.", "Good morning! Any tips for a productive day?", "Write a short motivational quote.",
    "What do pandas eat?", "Why do cats purr?", "Write a one-paragraph story about a robot.",
]

CHAT_TEMPLATES = ["{t}", "Quick question: {t}", "{t} Keep it short."]

FAMILIES = {
    "code": (CODE_TEMPLATES, CODE_TASKS), "concept": (CONCEPT_TEMPLATES, CONCEPTS),
    "text": (TEXT_TEMPLATES, TEXTS), "code_edit": (CODE_EDIT_TEMPLATES, CODE_SNIPPETS),
    "list": (LIST_TEMPLATES, LIST_TOPICS), "howto": (HOWTO_TEMPLATES, HOWTOS), "chat": (CHAT_TEMPLATES, CHAT),
}

SYSTEM_PROMPTS = [None, None, None, "You are a concise assistant.", "You are a helpful coding assistant.",
                  "Answer clearly and briefly."]


def digest(text: str) -> int:
    # sha256, not Python's salted hash(), so the split is the same on every machine.
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def held_out_part(items: list[str], fraction: float) -> set[str]:
    """The items with the smallest hashes: `fraction` of them, at least one (each family gets some)."""
    return set(sorted(items, key=digest)[:max(1, round(len(items) * fraction))])


def instructions(template_fraction: float = 0.25, topic_fraction: float = 0.15) -> tuple[list[dict], list[dict]]:
    """(train, held_out) instructions: {"family", "system", "user"} in a fixed order."""
    train, heldout = [], []
    for family, (templates, topics) in FAMILIES.items():
        out_templates, out_topics = held_out_part(templates, template_fraction), held_out_part(topics, topic_fraction)
        for template, topic in itertools.product(templates, topics):
            user = template.format(t=topic)
            t_out, p_out = template in out_templates, topic in out_topics
            if t_out != p_out:
                continue  # a held-out phrasing or topic never reaches training
            system = SYSTEM_PROMPTS[(digest(user) >> 4) % len(SYSTEM_PROMPTS)]
            (heldout if t_out else train).append({"family": family, "system": system, "user": user})
    return train, heldout


def messages(instruction: dict) -> list[dict]:
    system = [{"role": "system", "content": instruction["system"]}] if instruction["system"] else []
    return system + [{"role": "user", "content": instruction["user"]}]
