// Node tests of javascript/magicnaming.js's pure text functions, and its WebUI glue on a tiny DOM stub.
// Run: node tests/js/magicnaming.test.js (tests/test_webui_js.py runs it under pytest).
"use strict";
const assert = require("assert");
const path = require("path");

const mn = require(path.join(__dirname, "..", "..", "javascript", "magicnaming.js"));
const tests = [];
const test = (name, fn) => tests.push([name, fn]);

test("partialTagAt finds the unfinished tag before the cursor", () => {
    assert.deepStrictEqual(mn.partialTagAt("a photo of <name:al", 19), {start: 11, prefix: "al"});
    assert.deepStrictEqual(mn.partialTagAt("<NAME:", 6), {start: 0, prefix: ""});
    assert.strictEqual(mn.partialTagAt("a photo of <name:al", 15), null);
    assert.strictEqual(mn.partialTagAt("<name:alice> and", 16), null);
    assert.strictEqual(mn.partialTagAt("<name:al ice", 12), null);
    assert.strictEqual(mn.partialTagAt("<lora:al", 8), null);
});

test("matchingNames: prefix matches only by default, substrings after them when asked; case-insensitive", () => {
    const names = ["Alice", "bob", "malia", "ALBERT", "carol", "nanny"];
    assert.deepStrictEqual(mn.matchingNames(names, "al"), ["Alice", "ALBERT"]);
    assert.deepStrictEqual(mn.matchingNames(names, "a"), ["Alice", "ALBERT"]);  // not nanny, malia, carol
    assert.deepStrictEqual(mn.matchingNames(names, "al", 12, "prefix"), ["Alice", "ALBERT"]);
    assert.deepStrictEqual(mn.matchingNames(names, "al", 12, "anywhere"), ["Alice", "ALBERT", "malia"]);
    assert.deepStrictEqual(mn.matchingNames(names, ""), names);
    assert.deepStrictEqual(mn.matchingNames(names, "", 2), ["Alice", "bob"]);
    assert.deepStrictEqual(mn.matchingNames(names, "zz"), []);
});

test("parseNames reads the accordion's names channel; anything else gives no names", () => {
    assert.deepStrictEqual(mn.parseNames('{"names": ["alice", "bob"], "match": "anywhere"}'),
        {names: ["alice", "bob"], match: "anywhere"});
    assert.deepStrictEqual(mn.parseNames('{"names": ["alice", "bad name>", 3], "match": "odd"}'),
        {names: ["alice"], match: "prefix"});
    assert.deepStrictEqual(mn.parseNames("not json"), {names: [], match: "prefix"});
    assert.deepStrictEqual(mn.parseNames(""), {names: [], match: "prefix"});
    assert.strictEqual(mn.tabOfPrompt("img2img_neg_prompt"), "img2img");
    assert.strictEqual(mn.tabOfPrompt("txt2img_prompt"), "txt2img");
    assert.strictEqual(mn.tabOfPrompt("other"), null);
});

test("completeTagAt closes the tag and puts the cursor after it", () => {
    assert.deepStrictEqual(mn.completeTagAt("a <name:al hiking", 10, "alice"),
        {text: "a <name:alice> hiking", cursor: 14});
    assert.deepStrictEqual(mn.completeTagAt("a <name:al|ice> x".replace("|", ""), 10, "alice"),
        {text: "a <name:alice> x", cursor: 14});
    assert.deepStrictEqual(mn.completeTagAt("<name:a:0.5>", 7, "alice"),
        {text: "<name:alice:0.5>", cursor: 11});
    assert.strictEqual(mn.completeTagAt("no tag here", 5, "alice"), null);
});

test("insertTagAt replaces the selection and keeps words apart", () => {
    assert.deepStrictEqual(mn.insertTagAt("a photo of", 10, 10, "bob"), {text: "a photo of <name:bob>", cursor: 21});
    assert.deepStrictEqual(mn.insertTagAt("photo hiking", 6, 6, "bob"),
        {text: "photo <name:bob> hiking", cursor: 17});
    assert.deepStrictEqual(mn.insertTagAt("a XX, b", 2, 4, "bob"), {text: "a <name:bob>, b", cursor: 12});
    assert.deepStrictEqual(mn.insertTagAt("", 0, 0, "bob"), {text: "<name:bob>", cursor: 10});
    assert.throws(() => mn.insertTagAt("", 0, 0, "bad name>"), /not an identity name/);
});

test("tabOfDropdown reads the accordion dropdown's element id", () => {
    assert.strictEqual(mn.tabOfDropdown("script_txt2img_magicnaming_identity"), "txt2img");
    assert.strictEqual(mn.tabOfDropdown("script_img2img_magicnaming_identity"), "img2img");
    assert.strictEqual(mn.tabOfDropdown("script_txt2img_magicnaming_mode"), null);
    assert.strictEqual(mn.tabOfDropdown(undefined), null);
});

// ----------------------------------------------------------------------------- the glue on a DOM stub

// Just enough CSS selectors for the glue: "#id", "tag.class", "[id^='x']", "[id$='x']", and lists with ",".
function matchesOne(el, selector) {
    const id = el.id || "";
    let rest = selector.trim();
    if (rest.startsWith("#")) return id === rest.slice(1);
    const attrs = [...rest.matchAll(/\[id([\^$])='([^']*)'\]/g)];
    rest = rest.replace(/\[[^\]]*\]/g, "");
    for (const [, op, value] of attrs) {
        if (op === "^" ? !id.startsWith(value) : !id.endsWith(value)) return false;
    }
    if (!rest) return attrs.length > 0;
    const [tag, ...classes] = rest.split(".");
    if (tag && el.tagName !== tag) return false;
    return classes.every((c) => el.className.split(" ").includes(c));
}

class FakeElement {
    constructor(tag) {
        this.tagName = tag; this.children = []; this.listeners = {}; this.style = {}; this.className = "";
        this.value = ""; this.selectionStart = 0; this.selectionEnd = 0; this.offsetParent = {};
        this.textContent = "";
    }
    set innerHTML(_html) { this.children = []; }
    appendChild(child) { this.children.push(child); return child; }
    addEventListener(type, fn) { (this.listeners[type] = this.listeners[type] || []).push(fn); }
    fire(type, extra) {
        const event = Object.assign({type, preventDefault() {}, stopPropagation() {}}, extra || {});
        (this.listeners[type] || []).forEach((fn) => fn(event));
    }
    getBoundingClientRect() { return {left: 0, bottom: 0}; }
    focus() {}
    getAttribute(name) { return (this.attributes || {})[name] || null; }
    closest(selector) {
        for (let el = this; el; el = el.parent) {
            if (selector.split(",").some((one) => matchesOne(el, one))) return el;
        }
        return null;
    }
    querySelector(selector) {
        for (const child of this.children) {
            if (matchesOne(child, selector)) return child;
            const found = child.querySelector(selector);
            if (found) return found;
        }
        return null;
    }
}

function tree(tag, props, children) {
    const el = Object.assign(new FakeElement(tag), props || {});
    (children || []).forEach((child) => { child.parent = el; el.children.push(child); });
    return el;
}

test("autocomplete in a prompt box: names from the accordion's channel, suggest, accept with Enter", async () => {
    const prompt = new FakeElement("textarea");
    tree("div", {id: "txt2img_prompt"}, [prompt]);
    const namesBox = new FakeElement("textarea");
    namesBox.value = JSON.stringify({names: ["alice", "bob", "nanny"], match: "prefix"});
    const refresh = new FakeElement("button");
    let refreshes = 0;
    refresh.click = () => { refreshes++; };
    const channel = {
        "#txt2img_prompt textarea": prompt,
        "#script_txt2img_magicnaming_names textarea": namesBox,
        "#script_txt2img_magicnaming_names_refresh": refresh,
    };
    const option = tree("li", {className: "item active", attributes: {"data-value": "carol"}});
    const dropdownInput = new FakeElement("input");
    tree("div", {id: "script_txt2img_magicnaming_identity"}, [dropdownInput, tree("ul", {}, [option])]);
    const app = new FakeElement("div");
    const body = new FakeElement("body");
    const inputs = [];
    let loaded = null;
    const fetched = [];
    const win = {
        scrollX: 0, scrollY: 0,
        onUiLoaded: (fn) => { loaded = fn; },
        gradioApp: () => Object.assign(app, {querySelector: (sel) => channel[sel] || null}),
        updateInput: (target) => inputs.push(target.value),
    };
    global.window = win;
    global.document = {body, createElement: (tag) => new FakeElement(tag)};
    global.fetch = (url) => { fetched.push(url); return Promise.reject(new Error("no REST call expected")); };
    const source = require("fs").readFileSync(path.join(__dirname, "..", "..", "javascript", "magicnaming.js"), "utf8");
    new Function("window", "globalThis", "module", source)(win, win, undefined);
    loaded();
    const popup = body.children[0];

    prompt.fire("focus");
    assert.strictEqual(refreshes, 1);  // focusing a prompt asks the UI to refill the names
    prompt.fire("blur");
    prompt.fire("focus");
    assert.strictEqual(refreshes, 1);  // ... not again within the names' lifetime
    prompt.value = "a photo of <name:a"; prompt.selectionStart = prompt.selectionEnd = prompt.value.length;
    prompt.fire("input");
    assert.deepStrictEqual(popup.children.map((li) => li.textContent), ["alice"]);  // not "nanny"
    namesBox.value = JSON.stringify({names: ["alice", "bob", "bert"], match: "prefix"});  // refilled
    prompt.value = "a photo of <name:b"; prompt.selectionStart = prompt.selectionEnd = prompt.value.length;
    prompt.fire("input");
    assert.deepStrictEqual(fetched, []);
    assert.strictEqual(popup.style.display, "block");
    assert.deepStrictEqual(popup.children.map((li) => li.textContent), ["bob", "bert"]);

    prompt.fire("keydown", {key: "Enter"});
    assert.strictEqual(prompt.value, "a photo of <name:bob>");
    assert.deepStrictEqual(inputs, ["a photo of <name:bob>"]);
    assert.strictEqual(popup.style.display, "none");

    prompt.selectionStart = prompt.selectionEnd = 2;
    win.magicnamingInsertTag("alice");
    assert.strictEqual(prompt.value, "a <name:alice> photo of <name:bob>");

    // choosing "carol" in the accordion's dropdown inserts at the prompt's cursor (mouse, then Enter)
    prompt.selectionStart = prompt.selectionEnd = 0;
    app.fire("mousedown", {target: option});
    assert.strictEqual(prompt.value, "<name:carol> a <name:alice> photo of <name:bob>");
    prompt.selectionStart = prompt.selectionEnd = prompt.value.length;
    const before = prompt.value;
    app.fire("keydown", {target: dropdownInput, key: "Enter"});
    // not during the keydown: the browser would then type the Enter into the prompt as a newline
    assert.strictEqual(prompt.value, before);
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.ok(prompt.value.endsWith("<name:bob> <name:carol>"));
    app.fire("keydown", {target: dropdownInput, key: "a"});
    app.fire("mousedown", {target: prompt});
    assert.ok(prompt.value.endsWith("<name:bob> <name:carol>"));
});

(async () => {
    let failed = 0;
    for (const [name, fn] of tests) {
        try { await fn(); console.log("ok - " + name); } catch (error) { failed++; console.log("not ok - " + name + "\n" + error.stack); }
    }
    console.log(`${tests.length - failed}/${tests.length} passed`);
    process.exit(failed ? 1 : 0);
})();
