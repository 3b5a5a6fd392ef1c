// kitae ui: the page. Everything it does is a call to the JSON routes of kitae.ui.app, each of
// which is a CLI command; the page keeps no state that the run directories do not.
"use strict";

// lineChart comes from charts.js (loaded first).

// --- language -----------------------------------------------------------------------------
const TEXT = {
  en: {
    "nav.runs": "Runs", "nav.new": "New run", "nav.compare": "Compare",
    "picker.title": "Choose a file", "picker.cancel": "Cancel", "picker.up": "⬑ parent folder",
    "runs.title": "Runs", "runs.empty": "No runs yet under", "runs.create": "Create a run",
    "runs.compare": "Compare selected", "runs.sweeps": "Sweeps", "runs.hint": "Click a column to sort; tick two or more runs to compare.",
    "col.run": "run", "col.status": "status", "col.task": "task", "col.model": "model", "col.adapter": "adapter",
    "col.progress": "progress", "col.train_s": "train s",
    "new.title": "New run", "new.from": "Start from", "new.example": "an example…", "new.run": "an existing run…",
    "new.blank": "a blank form", "new.yaml": "YAML", "new.download": "Download config.yaml", "new.launch": "Launch training",
    "new.overwrite": "replace a kitae run already in the output folder", "new.valid": "Valid — same check as kitae config check",
    "new.invalid": "Invalid", "new.default": "default", "new.required": "required", "new.browse": "Browse…",
    "new.preview": "Preview data (kitae data analyze)", "new.paste": "Paste YAML…", "new.pasted": "Load YAML",
    "new.top_errors": "Config errors", "new.analyzing": "Analysing…", "new.cmd": "Same as",
    "run.stop": "Stop (checkpoint)", "run.resume": "Resume", "run.copy": "New run from this config",
    "run.progress": "Progress", "run.epoch": "epoch", "run.batch": "batch", "run.step": "step", "run.phase": "phase",
    "run.loss": "loss", "run.lr": "learning rate", "run.tps": "tokens / s", "run.mem": "memory (GiB)",
    "run.dev": "dev metrics per epoch", "run.log": "Log", "run.metrics": "Metrics (selected model)",
    "run.plots": "Reports", "run.config": "Config", "run.try": "Try it", "run.try_hint": "One text per line (a batch).",
    "run.try_pair": "Text A / text B", "run.predict": "Predict", "run.generate": "Generate",
    "run.export": "Export and push", "run.export_btn": "Export", "run.merge": "merge LoRA into the weights",
    "run.push_btn": "Push to the hub", "run.private": "private", "run.public": "PUBLIC",
    "run.push_preview": "Show what would be uploaded", "run.push_files": "files to upload:", "run.elapsed": "elapsed in this process",
    "run.threshold": "threshold", "run.notyet": "Try it once the run has finished.",
    "cmp.title": "Compare runs", "cmp.pick": "Tick runs in the Runs table, or choose them here:", "cmp.go": "Compare",
    "cmp.diff": "Settings that differ", "cmp.metrics": "Metrics", "cmp.curves": "History", "cmp.plots": "Reports",
    "cmp.none": "The configs are identical apart from their output.",
    "status.running": "running", "status.finished": "finished", "status.interrupted": "interrupted",
    "status.failed": "failed", "status.starting": "starting", "status.stopped": "stopped", "status.pruned": "pruned",
  },
  ja: {
    "nav.runs": "ラン一覧", "nav.new": "新しいラン", "nav.compare": "比較",
    "picker.title": "ファイルを選ぶ", "picker.cancel": "キャンセル", "picker.up": "⬑ 親フォルダー",
    "runs.title": "ラン一覧", "runs.empty": "まだランがありません:", "runs.create": "ランを作る",
    "runs.compare": "選んだランを比較", "runs.sweeps": "スイープ", "runs.hint": "列をクリックで並べ替え。2 つ以上選ぶと比較できます。",
    "col.run": "ラン", "col.status": "状態", "col.task": "タスク", "col.model": "モデル", "col.adapter": "アダプター",
    "col.progress": "進捗", "col.train_s": "学習秒",
    "new.title": "新しいラン", "new.from": "ひな形", "new.example": "例から…", "new.run": "既存のランから…",
    "new.blank": "空のフォーム", "new.yaml": "YAML", "new.download": "config.yaml をダウンロード", "new.launch": "学習を開始",
    "new.overwrite": "出力フォルダーの既存の kitae ランを置き換える", "new.valid": "有効 — kitae config check と同じ検査",
    "new.invalid": "エラーあり", "new.default": "既定", "new.required": "必須", "new.browse": "参照…",
    "new.preview": "データをプレビュー（kitae data analyze）", "new.paste": "YAML を貼り付け…", "new.pasted": "YAML を読み込む",
    "new.top_errors": "設定のエラー", "new.analyzing": "分析中…", "new.cmd": "同じコマンド",
    "run.stop": "停止（チェックポイント保存）", "run.resume": "再開", "run.copy": "この設定で新しいラン",
    "run.progress": "進捗", "run.epoch": "エポック", "run.batch": "バッチ", "run.step": "ステップ", "run.phase": "段階",
    "run.loss": "損失", "run.lr": "学習率", "run.tps": "トークン / 秒", "run.mem": "メモリ（GiB）",
    "run.dev": "エポックごとの dev 指標", "run.log": "ログ", "run.metrics": "指標（選ばれたモデル）",
    "run.plots": "レポート", "run.config": "設定", "run.try": "試す", "run.try_hint": "1 行に 1 テキスト（まとめて予測）。",
    "run.try_pair": "テキスト A / テキスト B", "run.predict": "予測", "run.generate": "生成",
    "run.export": "エクスポートと公開", "run.export_btn": "エクスポート", "run.merge": "LoRA を重みに統合",
    "run.push_btn": "Hub に push", "run.private": "非公開", "run.public": "公開",
    "run.push_preview": "アップロード内容を確認", "run.push_files": "アップロードするファイル:", "run.elapsed": "このプロセスの経過",
    "run.threshold": "しきい値", "run.notyet": "ランが終わったら試せます。",
    "cmp.title": "ランの比較", "cmp.pick": "ラン一覧でチェックするか、ここで選んでください:", "cmp.go": "比較",
    "cmp.diff": "異なる設定", "cmp.metrics": "指標", "cmp.curves": "学習履歴", "cmp.plots": "レポート",
    "cmp.none": "output 以外の設定は同じです。",
    "status.running": "学習中", "status.finished": "完了", "status.interrupted": "中断", "status.failed": "失敗",
    "status.starting": "起動中", "status.stopped": "停止", "status.pruned": "枝刈り",
  },
};
let lang = localStorage.getItem("kitae.lang") || ((navigator.language || "").startsWith("ja") ? "ja" : "en");
const t = key => (TEXT[lang] && TEXT[lang][key]) || TEXT.en[key] || key;

function setLang(next) {
  lang = next;
  localStorage.setItem("kitae.lang", next);
  document.documentElement.lang = next;
  document.querySelectorAll("[data-lang]").forEach(b => b.classList.toggle("active", b.dataset.lang === next));
  document.querySelectorAll("[data-i18n]").forEach(el => { el.textContent = t(el.dataset.i18n); });
  render();
}

// --- helpers ------------------------------------------------------------------------------
// The login cookie (HttpOnly: this script never sees the token) goes with every same-origin call.
async function api(path, body) {
  const headers = {"X-Kitae": "1"};
  const init = body === undefined ? {headers} : {method: "POST", headers: {...headers, "Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (response.status === 401) { location.href = "/"; }  // logged out (a new token after a restart): the login form
  if (!response.ok) { const err = new Error(data.error || response.statusText); err.data = data; throw err; }
  return data;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "html") el.innerHTML = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function toast(message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast ${kind || ""}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

const fmt = v => {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v === "number") {
    const a = Math.abs(v);
    if (Number.isInteger(v)) return String(v);
    return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : (+v.toFixed(4)).toString();
  }
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
};
const badge = status => h("span", {class: `badge s-${(status || "").replace(/\s/g, "-")}`}, t(`status.${status}`) === `status.${status}` ? status : t(`status.${status}`));
const fileUrl = (run, file) => `/api/run/file?run=${encodeURIComponent(run)}&file=${encodeURIComponent(file)}`;
const cmd = text => h("div", {class: "cmd"}, h("span", {}, t("new.cmd")), h("code", {}, text));

// --- routing ------------------------------------------------------------------------------
let info = null, schema = null, timer = null;
const view = () => document.getElementById("view");

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "runs";
  const [page, ...rest] = hash.split("/");
  return {page, arg: decodeURIComponent(rest.join("/"))};
}

function render() {
  clearTimeout(timer);
  const {page, arg} = route();
  document.querySelectorAll("[data-nav]").forEach(a => a.classList.toggle("active", a.dataset.nav === page));
  const pages = {runs: renderRuns, new: renderNew, run: renderRun, compare: renderCompare};
  (pages[page] || renderRuns)(arg).catch(err => toast(err.message, "error"));
}

// --- runs table ---------------------------------------------------------------------------
const selected = new Set(JSON.parse(sessionStorage.getItem("kitae.selected") || "[]"));
let sortKey = "started", sortDesc = true;

async function renderRuns() {
  const data = await api("/api/runs");
  if (route().page !== "runs") return;
  const root = view();
  const metricKeys = [...new Set(data.runs.flatMap(r => r.headline.slice(0, 1)))];
  const settingKeys = ["training.lr", "training.epochs", "training.batch_size", "adapter.r", "model.max_length", "training.seed"];
  const columns = [
    {key: "run", label: t("col.run"), get: r => r.run},
    {key: "status", label: t("col.status"), get: r => r.status},
    {key: "task", label: t("col.task"), get: r => r.task},
    {key: "model", label: t("col.model"), get: r => r.model},
    {key: "adapter", label: t("col.adapter"), get: r => r.adapter},
    ...settingKeys.map(k => ({key: k, label: k.split(".")[1], get: r => r.settings[k], num: true})),
    ...metricKeys.flatMap(m => ["dev", "test"].map(s => ({key: `${s}.${m}`, label: `${s}.${m}`, get: r => r[s][m], num: true}))),
    {key: "train_seconds", label: t("col.train_s"), get: r => r.train_seconds, num: true},
    {key: "started", label: "started", get: r => r.started, hidden: true},
  ];
  const col = columns.find(c => c.key === sortKey) || columns[0];
  const rows = [...data.runs].sort((a, b) => {
    const x = col.get(a), y = col.get(b);
    if (x === undefined || x === null) return 1;
    if (y === undefined || y === null) return -1;
    const c = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
    return sortDesc ? -c : c;
  });
  const head = h("tr", {}, h("th", {}, ""), columns.filter(c => !c.hidden).map(c => h("th", {
    class: `${c.num ? "num" : ""} sortable ${c.key === sortKey ? (sortDesc ? "desc" : "asc") : ""}`,
    onclick: () => { sortDesc = c.key === sortKey ? !sortDesc : c.num; sortKey = c.key; renderRuns(); },
  }, c.label)));
  const body = rows.map(r => h("tr", {"data-run": r.run},
    h("td", {}, h("input", {type: "checkbox", "aria-label": `select ${r.run}`, checked: selected.has(r.run), onchange: e => {
      e.target.checked ? selected.add(r.run) : selected.delete(r.run);
      sessionStorage.setItem("kitae.selected", JSON.stringify([...selected]));
    }})),
    columns.filter(c => !c.hidden).map(c => {
      if (c.key === "run") return h("td", {}, h("a", {href: `#/run/${encodeURIComponent(r.run)}`}, r.run));
      if (c.key === "status") return h("td", {}, badge(r.status), r.status === "running" && r.progress ? h("small", {class: "muted"}, ` ${t("run.epoch")} ${r.progress.epoch || "-"}/${r.progress.epochs || "-"}`) : "");
      return h("td", {class: c.num ? "num" : ""}, fmt(c.get(r)));
    })));
  const table = data.runs.length
    ? h("div", {class: "table-wrap"}, h("table", {class: "runs", id: "runs-table"}, h("thead", {}, head), h("tbody", {}, body)))
    : h("p", {class: "empty"}, `${t("runs.empty")} ${info.runs_dir}. `, h("a", {href: "#/new"}, t("runs.create")));
  const sweeps = data.sweeps.length ? h("section", {class: "card"}, h("h2", {}, t("runs.sweeps")), data.sweeps.map(s => h("div", {class: "sweep"},
    h("h3", {}, s.name),
    h("div", {class: "table-wrap"}, simpleTable(Object.keys(s.rows[0] || {}), s.rows.map(r => Object.values(r)))),
    h("div", {class: "plots"}, s.plots.map(p => h("img", {src: fileUrl(s.name, p), alt: p,})))))) : "";
  root.replaceChildren(
    h("section", {class: "card"},
      h("div", {class: "card-head"}, h("h1", {}, t("runs.title")),
        h("div", {class: "actions"},
          h("a", {class: "button", href: "#/new"}, t("runs.create")),
          h("button", {type: "button", id: "compare-selected", onclick: () => {
            location.hash = `#/compare/${[...selected].map(encodeURIComponent).join(",")}`;
          }}, t("runs.compare")))),
      h("p", {class: "muted"}, t("runs.hint")), table, cmd(`kitae runs list ${info.runs_dir}`)),
    sweeps);
  if (data.runs.some(r => ["running", "starting"].includes(r.status))) timer = setTimeout(renderRuns, 2500);
}

function simpleTable(headers, rows) {
  return h("table", {class: "simple"}, h("thead", {}, h("tr", {}, headers.map(x => h("th", {}, x)))),
    h("tbody", {}, rows.map(r => h("tr", {}, r.map(c => h("td", {class: typeof c === "number" ? "num" : ""}, fmt(c)))))));
}

// --- new run: the form --------------------------------------------------------------------
let formValues = null, lastCheck = null, checkTimer = null;

async function renderNew(arg) {
  const root = view();
  const fromRun = new URLSearchParams(arg || "").get("from");
  if (fromRun) {
    const loaded = await api("/api/config/load", {source: "run", run: fromRun});
    formValues = loaded.values;
    history.replaceState(null, "", "#/new");
  }
  if (!formValues) formValues = Object.fromEntries(schema.fields.map(f => [f.path, initialValue(f)]));
  await useTaskSchema(formValues.task);
  const runs = (await api("/api/runs")).runs.filter(r => r.task);
  const starter = h("div", {class: "starter"},
    h("label", {}, t("new.from")),
    h("select", {id: "from-example", onchange: async e => {
      if (!e.target.value) return;
      const loaded = await api("/api/config/load", {source: "example", name: e.target.value});
      formValues = loaded.values; renderNew();
    }}, h("option", {value: ""}, t("new.example")), info.examples.map(x => h("option", {value: x}, x))),
    h("select", {id: "from-run", onchange: async e => {
      if (!e.target.value) return;
      const loaded = await api("/api/config/load", {source: "run", run: e.target.value});
      formValues = loaded.values; renderNew();
    }}, h("option", {value: ""}, t("new.run")), runs.map(r => h("option", {value: r.run}, r.run))),
    h("button", {type: "button", onclick: () => { formValues = Object.fromEntries(schema.fields.map(f => [f.path, initialValue(f)])); renderNew(); }}, t("new.blank")),
    h("button", {type: "button", onclick: pasteYaml}, t("new.paste")));
  const form = h("form", {id: "run-form", class: "run-form", onsubmit: e => e.preventDefault()},
    h("div", {id: "error-top", class: "error-top", hidden: true}),
    schema.sections.map((s, i) => {
      const fields = schema.fields.filter(f => f.section === s.section);
      const details = h("details", {class: "section", open: i < 6 || undefined, "data-section": s.section},
        h("summary", {}, s.title[lang] || s.title.en, h("small", {class: "muted"}, ` ${s.section || "task, output"} · ${fields.length}`)),
        h("div", {class: "fields"}, fields.map(fieldRow)),
        s.section === "data" ? h("div", {class: "preview-bar"}, h("button", {type: "button", id: "preview-data", onclick: previewData}, t("new.preview")), h("div", {id: "data-preview"})) : "");
      return details;
    }));
  const side = h("aside", {class: "yaml-side"},
    h("div", {class: "card sticky"},
      h("div", {class: "card-head"}, h("h2", {}, t("new.yaml")), h("span", {id: "check-state"})),
      h("pre", {id: "yaml-preview", class: "yaml"}),
      h("div", {class: "actions column"},
        h("a", {class: "button secondary", id: "download-yaml", download: "config.yaml", href: "#"}, t("new.download")),
        h("label", {class: "check"}, h("input", {type: "checkbox", id: "overwrite"}), t("new.overwrite")),
        h("button", {type: "button", id: "launch", class: "primary", onclick: launch}, t("new.launch"))),
      cmd("kitae config check config.yaml && kitae train config.yaml")));
  root.replaceChildren(h("div", {class: "card"}, h("div", {class: "card-head"}, h("h1", {}, t("new.title"))), starter),
    h("div", {class: "new-layout"}, form, side));
  scheduleCheck(0);
}

// The form is the chosen task's schema: another task (picked, or of a loaded config) fetches its
// form; values of keys both tasks have are kept, the new task's other keys start at their defaults.
async function useTaskSchema(task) {
  if (!task || task === schema.task) return;
  try { schema = await api(`/api/schema?task=${encodeURIComponent(task)}`); } catch (err) { return; }  // an unknown task: check names it
  for (const f of schema.fields) if (!(f.path in formValues)) formValues[f.path] = initialValue(f);
}

function initialValue(f) {
  if (f.kind === "bool") return !!f.default;
  if (f.kind === "yaml") return f.default_text || "";
  if (f.path === "output") return `${info.runs_dir.split("/").pop()}/my-run`;
  return f.default === null || f.default === undefined ? "" : (f.kind === "choice" ? f.default : String(f.default));
}

function fieldRow(f) {
  const id = `f-${f.path.replace(/\./g, "-")}`;
  const value = formValues[f.path];
  const onInput = e => {
    formValues[f.path] = e.target.type === "checkbox" ? e.target.checked : e.target.value;
    if (f.path === "task") renderNew(); else scheduleCheck();  // another task: another form
  };
  let input;
  if (f.kind === "bool") input = h("input", {type: "checkbox", id, name: f.path, checked: !!value, onchange: onInput});
  else if (f.kind === "choice") input = h("select", {id, name: f.path, onchange: onInput},
    f.nullable || f.default === null ? h("option", {value: ""}, "—") : "",
    f.choices.map(c => h("option", {value: c, selected: c === value || undefined}, c)));
  else if (f.kind === "yaml" || f.path === "data.template" || f.path === "data.system_prompt")
    input = h("textarea", {id, name: f.path, rows: 1, spellcheck: "false", oninput: onInput}, value);
  else input = h("input", {id, name: f.path, type: "text", value: value ?? "", spellcheck: "false", autocomplete: "off",
    inputmode: f.kind === "int" || f.kind === "float" ? "decimal" : undefined, oninput: onInput});
  const browse = f.kind === "path" && f.path.startsWith("data.") ? h("button", {type: "button", class: "small", onclick: () => pickFile(f.path, id)}, t("new.browse")) : "";
  const meta = [f.kind === "choice" ? "" : f.kind, f.required ? t("new.required") : `${t("new.default")}: ${f.default_text ?? (f.default === null ? "null" : fmt(f.default))}`,
    f.bounds && Object.keys(f.bounds).length ? Object.entries(f.bounds).map(([k, v]) => `${{minimum: "≥", maximum: "≤", exclusiveMinimum: ">", exclusiveMaximum: "<"}[k]} ${v}`).join(" ") : ""].filter(Boolean).join(" · ");
  return h("div", {class: `field k-${f.kind}`, "data-path": f.path},
    h("label", {for: id}, h("span", {class: "key"}, f.key), h("code", {class: "path"}, f.path)),
    h("div", {class: "control"}, input, browse),
    h("p", {class: "help"}, f.description[lang] || f.description.en, h("span", {class: "meta"}, ` (${meta})`)),
    h("p", {class: "error", id: `${id}-error`, hidden: true}));
}

function scheduleCheck(delay) {
  clearTimeout(checkTimer);
  checkTimer = setTimeout(checkForm, delay === undefined ? 350 : delay);
}

async function checkForm() {
  const result = await api("/api/config/check", {values: formValues});
  lastCheck = result;
  if (route().page !== "new") return;
  document.getElementById("yaml-preview").textContent = result.yaml;
  const link = document.getElementById("download-yaml");
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([result.yaml], {type: "text/yaml"}));
  const state = document.getElementById("check-state");
  state.replaceChildren(result.valid ? h("span", {class: "ok"}, `✓ ${t("new.valid")}`) : h("span", {class: "bad"}, `✗ ${t("new.invalid")}`));
  document.querySelectorAll(".field").forEach(el => el.classList.remove("has-error"));
  document.querySelectorAll(".field .error").forEach(el => { el.hidden = true; el.textContent = ""; });
  const top = document.getElementById("error-top");
  const general = [];
  for (const err of result.errors) {
    const row = err.field && document.querySelector(`.field[data-path="${err.field}"]`);
    if (row) {
      row.classList.add("has-error");
      const slot = row.querySelector(".error");
      slot.hidden = false;
      slot.textContent = slot.textContent ? `${slot.textContent}\n${err.message}` : err.message;
      row.closest("details").open = true;
    } else general.push(err.message);
  }
  top.hidden = !general.length;
  top.replaceChildren(h("strong", {}, t("new.top_errors")), h("ul", {}, general.map(m => h("li", {}, m))));
  document.getElementById("launch").disabled = !result.valid;
}

async function pasteYaml() {
  const text = prompt("YAML");
  if (!text) return;
  const loaded = await api("/api/config/load", {source: "yaml", text});
  formValues = loaded.values;
  if (loaded.unknown.length) toast(`unknown keys: ${loaded.unknown.join(", ")}`, "error");
  renderNew();
}

async function pickFile(path, inputId, folder) {
  const dialog = document.getElementById("picker");
  const start = folder ?? (formValues[path] ? formValues[path].replace(/[^/]*$/, "") : "");
  let listing;
  try { listing = await api(`/api/files?dir=${encodeURIComponent(start)}`); } catch (err) { listing = await api("/api/files"); }
  document.getElementById("picker-folder").textContent = listing.folder;
  document.getElementById("picker-list").replaceChildren(
    listing.parent === null ? "" : h("li", {}, h("a", {href: "#", onclick: e => { e.preventDefault(); pickFile(path, inputId, listing.parent); }}, t("picker.up"))),
    listing.entries.map(entry => h("li", {}, h("a", {href: "#", class: entry.dir ? "dir" : "file", onclick: e => {
      e.preventDefault();
      if (entry.dir) { pickFile(path, inputId, entry.path); return; }
      formValues[path] = entry.path;
      document.getElementById(inputId).value = entry.path;
      dialog.close();
      scheduleCheck(0);
    }}, entry.dir ? `📁 ${entry.name}` : `📄 ${entry.name}`), entry.bytes !== undefined ? h("small", {class: "muted"}, ` ${(entry.bytes / 1024).toFixed(1)} KiB`) : "")));
  if (!dialog.open) dialog.showModal();
}

async function previewData() {
  const box = document.getElementById("data-preview");
  box.replaceChildren(h("p", {class: "muted"}, t("new.analyzing")));
  try {
    const result = await api("/api/data/analyze", {values: formValues});
    const report = result.report;
    const splits = Object.entries(report.splits);
    const lengthRows = splits.map(([name, s]) => [name, s.examples, s.characters?.p50, s.characters?.p95, s.tokens?.p50, s.tokens?.p95, s.tokens?.over_max_length]);
    const blocks = [simpleTable(["split", "examples", "chars p50", "chars p95", "tokens p50", "tokens p95", "over max_length"], lengthRows)];
    if (report.labels && report.labels.length && splits.some(([, s]) => s.examples)) {
      blocks.push(h("p", {class: "muted"}, `labels: ${report.labels.join(", ")}`));
    }
    box.replaceChildren(...blocks, h("div", {class: "plots"}, result.plots.map(p => h("img", {alt: p, src: `/api/analysis/file?id=${result.id}&file=${encodeURIComponent(p)}`}))), cmd(result.command));
  } catch (err) {
    box.replaceChildren(h("p", {class: "error"}, err.message));
  }
}

async function launch() {
  const button = document.getElementById("launch");
  button.disabled = true;
  try {
    const result = await api("/api/jobs/launch", {values: formValues, overwrite: document.getElementById("overwrite").checked});
    toast(`${result.job.command_line}`, "ok");
    location.hash = `#/run/${encodeURIComponent(result.run)}`;
  } catch (err) {
    toast(err.message, "error");
    button.disabled = false;
  }
}

// --- one run: watch, metrics, try ---------------------------------------------------------
async function renderRun(name) {
  const run = await api(`/api/run?run=${encodeURIComponent(name)}`);
  if (route().page !== "run" || route().arg !== name) return;
  const live = ["running", "starting"].includes(run.status);
  const progress = run.progress;
  const steps = progress ? progress.steps : [];
  const epochs = progress ? progress.epochs_done : run.history;
  const devKeys = [...new Set((epochs || []).flatMap(r => Object.keys(r).filter(k => k.startsWith("dev_") && k !== "dev_loss" && typeof r[k] === "number")))].slice(0, 4);
  const series = (key, label) => [{name: label, points: steps.filter(s => typeof s[key] === "number").map(s => [s.step, s[key]])}];
  const charts = h("div", {class: "charts"},
    lineChart(series("loss", t("run.loss")), {title: t("run.loss"), xLabel: t("run.step")}),
    lineChart(series("lr", t("run.lr")), {title: t("run.lr"), xLabel: t("run.step")}),
    lineChart(series("tokens_per_s", t("run.tps")), {title: t("run.tps"), xLabel: t("run.step")}),
    lineChart(Object.keys(steps[0] || {}).filter(k => k.endsWith("_gib")).map(k => ({name: k, points: steps.map(s => [s.step, s[k]])})), {title: t("run.mem"), xLabel: t("run.step")}),
    lineChart([{name: "train_loss", points: (epochs || []).map(r => [r.epoch, r.train_loss])}, {name: "dev_loss", points: (epochs || []).map(r => [r.epoch, r.dev_loss])}], {title: `${t("run.loss")} / ${t("run.epoch")}`, xLabel: t("run.epoch")}),
    lineChart(devKeys.map(k => ({name: k, points: epochs.map(r => [r.epoch, r[k]])})), {title: t("run.dev"), xLabel: t("run.epoch")}));
  const bar = progress && progress.batches ? (() => {
    const done = ((progress.epoch || 1) - 1) * progress.batches + (progress.batch || 0);
    const total = (progress.epochs || 1) * progress.batches;
    const share = progress.phase === "finished" ? 1 : Math.min(1, done / total);
    return h("div", {class: "progress"}, h("div", {class: "progress-bar"}, h("i", {style: `width:${(share * 100).toFixed(1)}%`})),
      h("div", {class: "progress-text", id: "progress-text"},
        `${t("run.phase")}: ${progress.phase} · ${t("run.epoch")} ${progress.epoch}/${progress.epochs} · ${t("run.batch")} ${progress.batch}/${progress.batches} · ${t("run.step")} ${progress.global_step}/${progress.updates} · ${t("run.elapsed")} ${fmt(progress.elapsed_seconds)} s`));
  })() : "";
  const actions = h("div", {class: "actions"},
    live ? h("button", {type: "button", id: "stop", class: "danger", onclick: async () => { await api("/api/jobs/stop", {run: name}); toast(run.commands?.stop || "SIGTERM", "ok"); setTimeout(render, 800); }}, t("run.stop")) : "",
    ["interrupted", "failed", "stopped"].includes(run.status) ? h("button", {type: "button", id: "resume", onclick: async () => { await api("/api/jobs/resume", {run: name}); setTimeout(render, 800); }}, t("run.resume")) : "",
    run.task ? h("a", {class: "button secondary", href: `#/new/from=${encodeURIComponent(name)}`}, t("run.copy")) : "");
  const metricTable = Object.keys(run.metrics || {}).length ? (() => {
    const splits = Object.keys(run.metrics);
    const keys = [...new Set(splits.flatMap(s => Object.keys(run.metrics[s])))];
    return simpleTable(["metric", ...splits], keys.map(k => [k, ...splits.map(s => run.metrics[s][k])]));
  })() : "";
  const finished = ["finished", "pruned"].includes(run.status) && run.has_model;
  const plots = (run.files || []).filter(f => f.endsWith(".png"));
  const root = view();
  const wasOpen = document.getElementById("try-panel")?.dataset.run === name ? document.getElementById("try-panel") : null;
  root.replaceChildren(
    h("section", {class: "card"},
      h("div", {class: "card-head"}, h("h1", {}, run.run, " ", badge(run.status), run.pid ? h("small", {class: "muted"}, ` pid ${run.pid}`) : ""), actions),
      h("p", {class: "muted"}, [run.task, run.model, run.adapter].filter(Boolean).join(" · ")),
      bar, charts,
      h("details", {class: "log", open: live || run.status === "failed" || run.status === "failed to start" || undefined},
        h("summary", {}, t("run.log")), h("pre", {id: "log-tail"}, run.log || "")),
      cmd(live ? `kitae train ${run.job ? run.job.config : "CONFIG"}` : (run.commands?.show || ""))),
    metricTable ? h("section", {class: "card"}, h("h2", {}, t("run.metrics")), metricTable) : "",
    wasOpen || (finished ? tryPanel(name, run) : ""),
    plots.length ? h("section", {class: "card"}, h("h2", {}, t("run.plots")), h("div", {class: "plots"}, plots.map(p => h("figure", {}, h("img", {src: `${fileUrl(name, p)}&v=${run.info?.wall_seconds || ""}`, alt: p,}), h("figcaption", {}, p))))) : "",
    finished ? exportPanel(name) : "",
    run.config_yaml ? h("section", {class: "card"}, h("details", {}, h("summary", {}, t("run.config")), h("pre", {class: "yaml"}, run.config_yaml))) : "");
  if (live) timer = setTimeout(() => renderRun(name).catch(err => toast(err.message, "error")), 1500);
}

function tryPanel(name, run) {
  const panel = h("section", {class: "card", id: "try-panel", "data-run": name}, h("h2", {}, t("run.try")));
  const out = h("div", {id: "try-output"});
  const isGenerator = run.capability === "generate";  // what the run's task declares
  const pair = !!run.config["data.text_fields"];
  const textA = h("textarea", {id: "try-text", rows: 4, placeholder: pair ? "text A (one per line)" : t("run.try_hint")});
  const textB = pair ? h("textarea", {id: "try-text-b", rows: 4, placeholder: "text B (one per line)"}) : "";
  const button = h("button", {type: "button", class: "primary", id: "try-button", onclick: async () => {
    button.disabled = true;
    try {
      const lines = textA.value.split("\n").map(s => s.trim()).filter(Boolean);
      if (isGenerator) {
        const result = await api("/api/generate", {run: name, prompts: lines});
        out.replaceChildren(...result.generations.map((g, i) => h("div", {class: "prediction"}, h("div", {class: "text"}, lines[i]), h("pre", {}, g))));
        return;
      }
      const served = await api("/api/try", {run: name});
      const seconds = pair ? textB.value.split("\n").map(s => s.trim()).filter(Boolean) : [];
      const texts = pair ? lines.map((a, i) => [a, seconds[i] || ""]) : lines;
      const result = await api(served.predict_url, {texts});
      out.replaceChildren(...result.predictions.map((p, i) => predictionView(pair ? texts[i].join(" / ") : texts[i], p, served.thresholds)),
        cmd(`kitae serve ${run.path}  →  POST ${served.predict_url.replace(/^\/serve\/\d+/, "")}`));
    } catch (err) { out.replaceChildren(h("p", {class: "error"}, err.message)); }
    finally { button.disabled = false; }
  }}, isGenerator ? t("run.generate") : t("run.predict"));
  panel.append(h("div", {class: pair ? "pair-inputs" : ""}, textA, textB), h("div", {class: "actions"}, button), out);
  return panel;
}

function predictionView(text, p, thresholds) {
  const rows = [];
  if (p.probabilities) {
    const entries = Object.entries(p.probabilities).sort((a, b) => thresholds ? 0 : b[1] - a[1]);
    for (const [label, prob] of entries) {
      const threshold = thresholds ? thresholds[label] : null;
      const chosen = Array.isArray(p.label) ? p.label.includes(label) : p.label === label;
      rows.push(h("div", {class: `prob ${chosen ? "chosen" : ""}`},
        h("span", {class: "prob-label"}, label),
        h("span", {class: "prob-bar"}, h("i", {style: `width:${(prob * 100).toFixed(1)}%`}),
          threshold !== null && threshold !== undefined ? h("b", {class: "threshold", title: `${t("run.threshold")} ${threshold}`, style: `left:${(threshold * 100).toFixed(1)}%`}) : ""),
        h("span", {class: "prob-value"}, `${(prob * 100).toFixed(1)}%${threshold != null ? ` / ${t("run.threshold")} ${(+threshold).toFixed(2)}` : ""}`)));
    }
  } else if (p.scores) {
    for (const [k, v] of Object.entries(p.scores)) rows.push(h("div", {class: "prob"}, h("span", {class: "prob-label"}, k), h("span", {class: "prob-value"}, fmt(v))));
  }
  const label = Array.isArray(p.label) ? (p.label.length ? p.label.join(", ") : "—") : fmt(p.label);
  return h("div", {class: "prediction"}, h("div", {class: "text"}, text), h("div", {class: "label"}, "→ ", h("strong", {class: "predicted-label"}, label), p.truncated ? h("small", {class: "muted"}, " (truncated)") : ""), rows);
}

function exportPanel(name) {
  const merge = h("input", {type: "checkbox", id: "merge"});
  const repo = h("input", {type: "text", id: "repo-id", placeholder: "user/name"});
  const priv = h("input", {type: "checkbox", id: "private", checked: true});
  const out = h("div", {id: "export-output"});
  return h("section", {class: "card"}, h("h2", {}, t("run.export")),
    h("div", {class: "actions"},
      h("label", {class: "check"}, merge, t("run.merge")),
      h("button", {type: "button", id: "export", onclick: async () => {
        try { const r = await api("/api/export", {run: name, merge: merge.checked}); out.replaceChildren(h("p", {class: "ok"}, `✓ ${r.folder}`), cmd(r.command)); }
        catch (err) { out.replaceChildren(h("p", {class: "error"}, err.message)); }
      }}, t("run.export_btn"))),
    h("div", {class: "actions"}, repo, h("label", {class: "check"}, priv, t("run.private")),
      h("button", {type: "button", id: "push-preview", onclick: async () => {
        // First what would be uploaded, and where; the upload itself is a second, explicit click.
        out.replaceChildren(h("p", {class: "muted"}, "…"));
        try {
          const staged = await api("/api/push/preview", {run: name, repo_id: repo.value, private: priv.checked});
          const confirm = h("button", {type: "button", id: "push-confirm", class: staged.private ? "" : "danger", onclick: async () => {
            try { const r = await api("/api/push", {run: name, repo_id: staged.repo_id, private: staged.private}); out.replaceChildren(h("p", {class: "ok"}, `✓ ${r.url} (${r.private ? t("run.private") : t("run.public")})`)); }
            catch (err) { out.replaceChildren(h("p", {class: "error"}, err.message)); }
          }}, `${t("run.push_btn")}: ${staged.repo_id} (${staged.private ? t("run.private") : t("run.public")})`);
          out.replaceChildren(h("p", {id: "push-summary"}, `${t("run.push_files")} ${staged.files.length} (${(staged.bytes / 1048576).toFixed(1)} MiB) → ${staged.repo_id}, ${staged.private ? t("run.private") : t("run.public")}`),
            simpleTable(["file", "bytes"], staged.files.map(f => [f.name, f.bytes])), confirm);
        } catch (err) { out.replaceChildren(h("p", {class: "error"}, err.message)); }
      }}, t("run.push_preview"))), out);
}

// --- compare ------------------------------------------------------------------------------
async function renderCompare(arg) {
  const names = (arg || "").split(",").filter(Boolean);
  const root = view();
  const all = (await api("/api/runs")).runs.filter(r => r.task);
  const picker = h("div", {class: "compare-pick"}, h("p", {class: "muted"}, t("cmp.pick")),
    all.map(r => h("label", {class: "check"}, h("input", {type: "checkbox", value: r.run, checked: names.includes(r.run) || undefined}), r.run)),
    h("button", {type: "button", id: "compare-go", onclick: () => {
      const chosen = [...root.querySelectorAll(".compare-pick input:checked")].map(i => i.value);
      location.hash = `#/compare/${chosen.map(encodeURIComponent).join(",")}`;
    }}, t("cmp.go")));
  if (names.length < 2) { root.replaceChildren(h("section", {class: "card"}, h("h1", {}, t("cmp.title")), picker)); return; }
  const data = await api("/api/compare", {runs: names});
  const diffs = Object.entries(data.differences);
  const metricRows = Object.entries(data.metrics).filter(([, v]) => v.some(x => x !== null && x !== undefined));
  // The best value of a metric row in bold (lower is better for losses and errors).
  const lowerIsBetter = key => /loss|rmse|mae|mse|hamming|seconds/.test(key);
  const metricRow = (key, values) => {
    const nums = values.filter(v => typeof v === "number");
    const top = nums.length > 1 ? (lowerIsBetter(key) ? Math.min(...nums) : Math.max(...nums)) : null;
    return h("tr", {}, h("td", {}, key), values.map(v => h("td", {class: `num ${v === top && nums.some(n => n !== top) ? "best" : ""}`}, fmt(v))));
  };
  const shortPath = v => typeof v === "string" && v.startsWith("/") && v.split("/").length > 3 ? `…/${v.split("/").slice(-2).join("/")}` : v;
  // Curves: the losses and the first few dev metrics (the selection metric first).
  const numeric = k => data.histories.some(hist => hist.some(r => typeof r[k] === "number"));
  const allKeys = [...new Set(data.histories.flatMap(hist => Object.keys(hist[0] || {})))].filter(numeric);
  const metricKeys = ["train_loss", "dev_loss", ...allKeys.filter(k => k.startsWith("dev_") && !["dev_loss", "dev_n"].includes(k)).slice(0, 4)].filter(k => allKeys.includes(k));
  root.replaceChildren(
    h("section", {class: "card"}, h("h1", {}, t("cmp.title")), picker),
    h("section", {class: "card"}, h("h2", {}, t("cmp.diff")),
      diffs.length ? h("div", {class: "table-wrap"}, h("table", {class: "simple diff"}, h("thead", {}, h("tr", {}, h("th", {}, "key"), names.map(n => h("th", {}, n)))),
        h("tbody", {}, diffs.map(([k, v]) => h("tr", {}, h("td", {}, h("code", {}, k)), v.map(x => h("td", {title: fmt(x)}, fmt(shortPath(x))))))))) : h("p", {class: "muted"}, t("cmp.none"))),
    h("section", {class: "card"}, h("h2", {}, t("cmp.metrics")),
      h("div", {class: "table-wrap"}, h("table", {class: "simple", id: "compare-metrics"}, h("thead", {}, h("tr", {}, h("th", {}, "metric"), names.map(n => h("th", {class: "num"}, n)))),
        h("tbody", {}, metricRows.map(([k, v]) => metricRow(k, v)), h("tr", {}, h("td", {}, "status"), data.status.map(x => h("td", {class: "num"}, badge(x))))))), cmd(data.command)),
    h("section", {class: "card"}, h("h2", {}, t("cmp.curves")), h("div", {class: "charts"},
      metricKeys.map(k => lineChart(names.map((n, i) => ({name: n, points: data.histories[i].filter(r => typeof r[k] === "number").map(r => [r.epoch, r[k]])})), {title: k, xLabel: t("run.epoch")})))),
    h("section", {class: "card"}, h("h2", {}, t("cmp.plots")), h("div", {class: "compare-plots", style: `grid-template-columns: repeat(${names.length}, 1fr)`},
      names.map(n => h("h3", {}, n)),
      [...new Set(data.plots.flat())].filter(p => p !== "history.png").flatMap(p => names.map((n, i) => data.plots[i].includes(p) ? h("figure", {}, h("img", {src: fileUrl(n, p), alt: `${n} ${p}`,}), h("figcaption", {}, p)) : h("div", {}))))));
}

// --- start --------------------------------------------------------------------------------
async function start() {
  [info, schema] = await Promise.all([api("/api/info"), api("/api/schema")]);
  document.getElementById("runs-dir").textContent = info.runs_dir;
  document.querySelectorAll("[data-lang]").forEach(b => b.addEventListener("click", () => setLang(b.dataset.lang)));
  window.addEventListener("hashchange", render);
  setLang(lang);
  // Headless and slow machines paint the header before the Japanese font has loaded: load it
  // and restyle once it is there.
  document.fonts.load("1em KitaeJP", "日本語").then(() => document.body.classList.add("fonts-ready")).catch(() => {});
}
start().catch(err => toast(err.message, "error"));
