"""Stand-in for modules/extra_networks.py: ``<word:args>`` tags are stripped from prompts and collected.

Every tag matching ``<(\\w+):([^>]+)>`` is removed, registered network type or not; activating a type nobody
registered only prints a line, as in the real file.
"""

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")

extra_network_registry = {}


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        name = m.group(1)
        args = m.group(2)
        res[name].append(ExtraNetworkParams(items=args.split(":")))
        return ""

    prompt = re.sub(re_extra_net, found, prompt)
    return prompt, res


def parse_prompts(prompts):
    res = []
    extra_data = None

    for prompt in prompts:
        updated_prompt, parsed_extra_data = parse_prompt(prompt)

        if extra_data is None:
            extra_data = parsed_extra_data

        res.append(updated_prompt)

    return res, extra_data


def activate(p, extra_network_data):
    for extra_network_name in extra_network_data:
        if extra_network_name not in extra_network_registry:
            print(f"Skipping unknown extra network: {extra_network_name}")


def deactivate(p, extra_network_data):
    pass
