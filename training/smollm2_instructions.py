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


# ---------------------------------------------------------------- more training instructions (draft v2)
# Train-only topics, asked with each family's train phrasings only. None of them restates a held-out
# topic (checked against held_out_part's picks when they were written), so the held-out set still
# measures new phrasings of new topics.

EXTRA_TOPICS = {
    "code": [
        "count the words in a sentence", "check whether a string contains only digits", "reverse the words in a sentence",
        "find the smallest number in a list", "compute the median of a list", "shuffle a list randomly",
        "convert a string to title case", "find the longest common prefix of a list of strings",
        "remove empty strings from a list", "swap two variables", "check whether a number is a perfect square",
        "compute the area of a circle", "convert a dictionary to a JSON string", "count the characters in a file",
        "find the duplicates in a list", "sum the even numbers in a list", "check whether a list is empty",
        "get the current date and time", "format a number with two decimal places", "convert hours to minutes",
        "implement a linked list", "implement insertion sort", "implement merge sort", "implement quicksort",
        "compute the n-th triangular number", "count the occurrences of a character in a string",
        "remove the vowels from a string", "check whether a string starts with a given prefix",
        "pad a number with leading zeros", "convert a list to a set", "sort a list of tuples by the second item",
        "find the key with the largest value in a dictionary", "merge two dictionaries", "read an environment variable",
        "create a folder if it does not exist", "copy a file", "delete a file safely", "list the files in a folder",
        "compute the distance between two points", "generate a list of random numbers", "round a number to the nearest ten",
        "check whether a number is even or odd", "compute the cumulative sum of a list", "interleave two lists",
        "find the first non-repeated character in a string", "convert Roman numerals to integers",
        "convert an integer to a Roman numeral", "count the words that start with a capital letter",
        "compute the product of a list of numbers", "check whether brackets in a string are balanced",
        "encode a string with a Caesar cipher", "compute the Hamming distance between two strings",
        "remove the whitespace at both ends of a string", "make a histogram of numbers with asterisks",
        "simulate rolling two dice", "compute a person's age from a birth date", "write a simple countdown timer",
        "implement a class for a bank account", "implement a simple to-do list class", "cache the results of a function",
    ],
    "concept": [
        "how a refrigerator works", "what an atom is", "how rainbows form", "what a virus is", "how a car engine works",
        "what a star is", "how magnets work", "what electricity is", "how the stock market works", "what a calorie is",
        "how tides work", "what a volcano is", "how bees make honey", "what an ecosystem is", "how a camera works",
        "what a loop is in programming", "what a class is in Python", "how a CPU works", "what a web browser does",
        "what a spreadsheet is", "how GPS works", "what a cell is in biology", "how the ear hears sound",
        "what democracy is", "how money is created", "what a programming language is", "what open source software is",
        "how a bridge holds weight", "what friction is", "what an exception is in Python", "how wind forms",
        "what a file system is", "how a microwave oven heats food", "what a protein is", "how clouds form",
        "what a dictionary is in Python", "what unit testing is", "how light travels", "what a planet is",
        "what a password manager does", "how the lungs work", "what photosynthesis needs", "what a URL is",
        "how a thermostat works", "what renewable energy is", "how fossils form", "what a byte is",
        "how a river shapes the land", "what the Renaissance was", "what an index is in a book",
    ],
    "list": [
        "ways to drink more water", "fruits that are high in vitamin C", "tips for a good night's sleep",
        "ideas for a birthday present", "exercises you can do at home", "ways to make friends in a new city",
        "tips for learning to cook", "Python built-in functions worth knowing", "ways to keep your computer secure",
        "tips for working from home", "snacks that are good for you", "places to visit in Europe",
        "ways to help the environment", "tips for taking notes in class", "games to play with kids",
        "things to do on a summer evening", "tips for running a meeting", "ways to use less plastic",
        "questions to ask a new friend", "skills every student should learn", "tips for writing good code comments",
        "ways to practise mindfulness", "dog breeds that are good with children", "reasons to go for a walk",
        "uses of a spreadsheet", "ideas for a picnic", "tips for saving energy at home", "ways to learn math",
        "mistakes to avoid when cooking pasta", "things to check before a long drive",
    ],
    "howto": [
        "boil an egg", "write a resume", "make a smoothie", "learn to swim", "save money on groceries",
        "meditate", "tie a tie", "make friends at work", "write a Python function", "read a CSV file in Python",
        "plan a trip", "study for a math test", "make pancakes", "stay motivated", "write a thank-you letter",
        "speak in public", "draw a cat", "wash a wool sweater", "clean a window without streaks", "grow herbs indoors",
        "make a strong password", "start learning to program", "set a SMART goal", "build a habit",
        "make a to-do list that works", "fix a slow computer", "write a clear bug report", "use a for loop in Python",
        "care for a houseplant", "prepare for a job interview",
    ],
    "chat": [
        "What's the weather like on Mars?", "Can you tell me a short story?", "What is the tallest mountain in the world?",
        "Write a short poem about the night sky.", "What is 7 times 8?", "What's your favourite colour?",
        "Give me a fun word to use today.", "What is the largest ocean?", "Write a haiku about coffee.",
        "How many legs does a spider have?", "Tell me something interesting about octopuses.", "What year did humans land on the moon?",
        "What is the speed of light?", "Suggest a name for a goldfish.", "Write a short birthday message for my sister.",
        "What is the smallest country in the world?", "Why is the ocean salty?", "What is the capital of Canada?",
        "Give me a compliment.", "What's a good way to start the day?", "Write a limerick about a cat.",
        "How many continents are there?", "What do bees do?", "What is the freezing point of water?",
        "Who painted the Mona Lisa?", "Write a two-sentence horror story.", "What is a synonym for happy?",
        "Can you help me name my new plant?", "What's the longest river in the world?", "Tell me a tongue twister.",
        "How many hours are there in a week?", "Write a short apology note for being late.", "What is the opposite of ancient?",
        "What colour do you get when you mix blue and yellow?", "Say hello in three languages.",
        "Why do leaves change colour in autumn?", "Is the Earth round?", "What is a group of crows called?",
        "Write a short toast for a wedding.", "What's the square root of 144?",
    ],
}


def train_templates(family: str, template_fraction: float = 0.25) -> list[str]:
    templates = FAMILIES[family][0]
    out = held_out_part(templates, template_fraction)
    return [t for t in templates if t not in out]


def extra_instructions(snippets: list[str], paragraphs: list[str]) -> list[dict]:
    """More train-only instructions: EXTRA_TOPICS with every train phrasing of their family, and code
    snippets and prose paragraphs the project may use (from the standard library and package docs), each
    with one train phrasing of the code_edit or text family chosen by hash."""
    out = []
    for family, topics in EXTRA_TOPICS.items():
        for template, topic in itertools.product(train_templates(family), topics):
            out.append({"family": family, "user": template.format(t=topic)})
    for family, items in (("code_edit", snippets), ("text", paragraphs)):
        templates = train_templates(family)
        for item in items:
            out.append({"family": family, "user": templates[digest(item) % len(templates)].format(t=item)})
    for inst in out:
        inst["system"] = SYSTEM_PROMPTS[(digest(inst["user"]) >> 4) % len(SYSTEM_PROMPTS)]
    return out
