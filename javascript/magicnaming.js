// MagicNaming: autocomplete of <name:...> with saved identity names in the prompt boxes, and inserting a
// tag at the cursor (used by the accordion's identity dropdown). The pure text functions at the top are
// exported for node tests; the DOM part only runs inside the WebUI (onUiLoaded exists there).
// The names come through the UI's own gradio channel, not the REST API (which --api-auth guards and the
// browser has no credentials for): the accordion's hidden textbox script_<tab>_magicnaming_names holds them
// as JSON {"names": [...], "match": "prefix"|"anywhere"}, and its hidden button ..._names_refresh refills it.
(function (root) {
    "use strict";

    var TAG_OPEN = "<name:";
    var NAME_CHARS = /^[A-Za-z0-9_.\-]*$/;
    var PARTIAL_TAG = /<name:([A-Za-z0-9_.\-]{0,64})$/i;
    var PROMPT_IDS = ["txt2img_prompt", "txt2img_neg_prompt", "img2img_prompt", "img2img_neg_prompt"];
    // The accordion's "saved identities" dropdown: script_<tab>_magicnaming_identity (accordion.py).
    var IDENTITY_DROPDOWN = /^script_(txt2img|img2img)_magicnaming_identity$/;
    var MAX_SUGGESTIONS = 12;
    var NAMES_TTL_MS = 10000;

    // The unfinished tag that ends at the cursor: {start, prefix}, or null when the cursor is not in one.
    function partialTagAt(text, cursor) {
        var match = PARTIAL_TAG.exec(text.slice(0, cursor));
        if (!match) return null;
        return {start: cursor - match[0].length, prefix: match[1]};
    }

    // Names starting with the prefix (case-insensitive), at most `limit`; with match "anywhere", names
    // containing it follow them.
    function matchingNames(names, prefix, limit, match) {
        var wanted = prefix.toLowerCase();
        var starts = [], contains = [];
        names.forEach(function (name) {
            var key = name.toLowerCase();
            if (key.indexOf(wanted) === 0) starts.push(name);
            else if (match === "anywhere" && wanted && key.indexOf(wanted) > 0) contains.push(name);
        });
        return starts.concat(contains).slice(0, limit || MAX_SUGGESTIONS);
    }

    // The accordion's names textbox value -> {names, match}; nothing usable -> no names.
    function parseNames(text) {
        try {
            var body = JSON.parse(text || "{}");
            var names = Array.isArray(body.names) ? body.names.filter(function (name) {
                return typeof name === "string" && NAME_CHARS.test(name) && name.length > 0;
            }) : [];
            return {names: names, match: body.match === "anywhere" ? "anywhere" : "prefix"};
        } catch (error) {
            return {names: [], match: "prefix"};
        }
    }

    // "txt2img"/"img2img" for a prompt box's element id, or null.
    function tabOfPrompt(elementId) {
        var match = /^(txt2img|img2img)_(neg_)?prompt$/.exec(elementId || "");
        return match ? match[1] : null;
    }

    function tagFor(name, strength) {
        if (!NAME_CHARS.test(name) || !name) throw new Error("not an identity name: " + name);
        return TAG_OPEN + name + (strength === undefined || strength === null ? "" : ":" + strength) + ">";
    }

    // Finish the partial tag at the cursor with `name`: returns {text, cursor} (cursor after the tag).
    // Name characters right after the cursor and a closing '>' are replaced too, so completing in the
    // middle of an existing tag does not leave debris.
    function completeTagAt(text, cursor, name) {
        var partial = partialTagAt(text, cursor);
        if (!partial) return null;
        var end = cursor;
        while (end < text.length && /[A-Za-z0-9_.\-]/.test(text[end])) end++;
        var rest = text.slice(end);
        var tag = tagFor(name);
        if (rest[0] === ">" || rest[0] === ":") tag = tag.slice(0, -1);
        var before = text.slice(0, partial.start) + tag;
        return {text: before + rest, cursor: before.length + (rest[0] === ">" ? 1 : 0)};
    }

    // Insert a tag for `name` replacing the selection [start, end): returns {text, cursor}. A space is
    // added on either side where the tag would otherwise touch a word.
    function insertTagAt(text, start, end, name) {
        var before = text.slice(0, start), after = text.slice(end);
        var tag = tagFor(name);
        if (before && !/\s$/.test(before)) tag = " " + tag;
        if (after && !/^[\s,.;:!?)]/.test(after)) tag = tag + " ";
        return {text: before + tag + after, cursor: before.length + tag.length};
    }

    // "txt2img"/"img2img" for the accordion dropdown's element id, or null for any other element.
    function tabOfDropdown(elementId) {
        var match = IDENTITY_DROPDOWN.exec(elementId || "");
        return match ? match[1] : null;
    }

    var api = {
        tabOfDropdown: tabOfDropdown,
        tabOfPrompt: tabOfPrompt,
        parseNames: parseNames,
        partialTagAt: partialTagAt,
        matchingNames: matchingNames,
        completeTagAt: completeTagAt,
        insertTagAt: insertTagAt,
        tagFor: tagFor,
    };
    if (typeof module !== "undefined" && module.exports) module.exports = api;
    root.magicnaming = api;

    if (typeof root.onUiLoaded !== "function" || typeof document === "undefined") return;

    // ------------------------------------------------------------------------------------ WebUI glue

    var refreshed = {};
    var lastPrompt = null;

    // The names the accordion of `tabname` holds now.
    function currentNames(tabname) {
        var box = root.gradioApp().querySelector("#script_" + tabname + "_magicnaming_names textarea") ||
            root.gradioApp().querySelector("#script_" + tabname + "_magicnaming_names input");
        return parseNames(box ? box.value : "");
    }

    // Ask the server to refill the names (a gradio event of the UI), at most once per NAMES_TTL_MS.
    function refreshNames(tabname) {
        var now = Date.now();
        if (now - (refreshed[tabname] || 0) < NAMES_TTL_MS) return;
        var button = root.gradioApp().querySelector("#script_" + tabname + "_magicnaming_names_refresh");
        if (!button) return;
        refreshed[tabname] = now;
        button.click();
    }

    function setValue(textarea, text, cursor) {
        textarea.value = text;
        textarea.selectionStart = textarea.selectionEnd = cursor;
        if (typeof root.updateInput === "function") root.updateInput(textarea);
        else textarea.dispatchEvent(new Event("input", {bubbles: true}));
    }

    function makePopup() {
        var popup = document.createElement("ul");
        popup.className = "magicnaming-autocomplete";
        popup.style.display = "none";
        document.body.appendChild(popup);
        return popup;
    }

    function attach(textarea, popup, tabname) {
        var state = {items: [], index: 0};

        function close() { popup.style.display = "none"; state.items = []; }

        function accept(name) {
            var done = completeTagAt(textarea.value, textarea.selectionStart, name);
            close();
            if (done) setValue(textarea, done.text, done.cursor);
        }

        function render() {
            popup.innerHTML = "";
            state.items.forEach(function (name, i) {
                var item = document.createElement("li");
                item.textContent = name;
                if (i === state.index) item.className = "selected";
                item.addEventListener("mousedown", function (event) { event.preventDefault(); accept(name); });
                popup.appendChild(item);
            });
            var box = textarea.getBoundingClientRect();
            popup.style.left = (box.left + window.scrollX) + "px";
            popup.style.top = (box.bottom + window.scrollY) + "px";
            popup.style.display = state.items.length ? "block" : "none";
        }

        textarea.addEventListener("focus", function () { lastPrompt = textarea; refreshNames(tabname); });
        textarea.addEventListener("blur", close);
        textarea.addEventListener("input", function () {
            var partial = partialTagAt(textarea.value, textarea.selectionStart);
            if (!partial) { close(); return; }
            var known = currentNames(tabname);
            state.items = matchingNames(known.names, partial.prefix, MAX_SUGGESTIONS, known.match);
            state.index = 0;
            render();
        });
        textarea.addEventListener("keydown", function (event) {
            if (!state.items.length) return;
            if (event.key === "ArrowDown" || event.key === "ArrowUp") {
                var step = event.key === "ArrowDown" ? 1 : -1;
                state.index = (state.index + step + state.items.length) % state.items.length;
                render();
            } else if (event.key === "Enter" || event.key === "Tab") {
                accept(state.items[state.index]);
            } else if (event.key === "Escape") {
                close();
            } else {
                return;
            }
            event.preventDefault();
            event.stopPropagation();
        }, true);
    }

    // The prompt box to insert into: the one last used in that tab, else the tab's positive prompt.
    function promptOf(tabname) {
        if (lastPrompt && lastPrompt.closest("#" + tabname + "_prompt, #" + tabname + "_neg_prompt")) return lastPrompt;
        return root.gradioApp().querySelector("#" + tabname + "_prompt textarea");
    }

    function insertInto(textarea, name) {
        if (!textarea || !name) return;
        var done = insertTagAt(textarea.value, textarea.selectionStart, textarea.selectionEnd, name);
        setValue(textarea, done.text, done.cursor);
        textarea.focus();
    }

    // Insert <name:NAME> at the cursor of the prompt last used in `tabname` (default: the tab of the prompt
    // last used, else txt2img). Usable as a gradio `_js`/`js` callback: returns its arguments unchanged.
    root.magicnamingInsertTag = function (name, tabname) {
        var tab = tabname || (lastPrompt && lastPrompt.closest("#img2img_prompt, #img2img_neg_prompt") ? "img2img" : "txt2img");
        insertInto(promptOf(tab), name);
        return Array.prototype.slice.call(arguments);
    };

    // A choice in the accordion's dropdown (mouse, or Enter on the highlighted option) inserts its tag.
    function onDropdownChoice(event) {
        var item = event.target && event.target.closest ? event.target.closest("li.item") : null;
        if (event.type === "keydown") {
            if (event.key !== "Enter") return;
            var input = event.target;
            var owner = input.closest ? input.closest("[id^='script_'][id$='_magicnaming_identity']") : null;
            item = owner ? owner.querySelector("li.item.active") : null;
        }
        if (!item) return;
        var dropdown = item.closest("[id^='script_']");
        var tab = dropdown ? tabOfDropdown(dropdown.id) : null;
        if (!tab) return;
        var name = item.getAttribute("data-value") || item.getAttribute("aria-label");
        // On Enter, insert after the key's default action: focusing the prompt during keydown would let
        // the Enter land in the prompt as a newline.
        if (event.type === "keydown") setTimeout(function () { insertInto(promptOf(tab), name); }, 0);
        else insertInto(promptOf(tab), name);
    }

    // Opening the accordion re-reads the saved identities (its refresh button), also when the checkbox
    // stays as it was: v1.10.1 ticks it on opening only until the user has clicked the checkbox once, and
    // re-opening a ticked accordion changes nothing that the server would see.
    function refreshOnOpen(tabname) {
        var accordion = root.gradioApp().querySelector("#script_" + tabname + "_magicnaming_enabled");
        var labelWrap = accordion ? accordion.querySelector(".label-wrap") : null;
        if (!labelWrap) return;
        var wasOpen = labelWrap.classList.contains("open");
        new MutationObserver(function () {
            var open = labelWrap.classList.contains("open");
            if (open && !wasOpen) {
                var button = root.gradioApp().querySelector("#script_" + tabname + "_magicnaming_refresh");
                if (button) button.click();
            }
            wasOpen = open;
        }).observe(labelWrap, {attributes: true, attributeFilter: ["class"]});
    }

    root.onUiLoaded(function () {
        var popup = makePopup();
        refreshOnOpen("txt2img");
        refreshOnOpen("img2img");
        root.gradioApp().addEventListener("mousedown", onDropdownChoice, true);
        root.gradioApp().addEventListener("keydown", onDropdownChoice, true);
        PROMPT_IDS.forEach(function (id) {
            var textarea = root.gradioApp().querySelector("#" + id + " textarea");
            if (textarea) attach(textarea, popup, tabOfPrompt(id));
        });
    });
})(typeof window !== "undefined" ? window : globalThis);
