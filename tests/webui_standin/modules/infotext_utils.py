"""Stand-in for modules/infotext_utils.py: quoting, parsing infotext, and applying it to script controls.

``parse_generation_parameters`` splits the last line into ``Key: value`` pairs with the real regex (values
with commas or colons are JSON-quoted by ``quote``), calls the ``on_infotext_pasted`` callbacks, and
``paste_values`` maps params onto ``(component, key_or_function)`` fields as ``connect_paste`` does.
"""

import json
import re

from modules import script_callbacks

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)


class PasteField(tuple):
    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.api = api
        self.component = component
        self.label = target if isinstance(target, str) else None
        self.function = target if callable(target) else None


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text

    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text

    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict:
    """Infotext to a dict: Prompt, Negative prompt and every Key: value of the last line."""
    res = {}

    prompt = ""
    negative_prompt = ""

    done_with_prompt = False

    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt

    for k, v in re_param.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            res[k] = v
        except Exception:
            print(f'Error parsing "{k}: {v}"')

    script_callbacks.infotext_pasted_callback(x, res)

    return res


def paste_values(paste_fields, params: dict) -> dict:
    """Component -> new value for each field whose key (or function) yields a value, as connect_paste."""
    res = {}
    for output, key in paste_fields:
        if callable(key):
            v = key(params)
        else:
            v = params.get(key, None)

        if v is None:
            continue
        res[output] = v
    return res
