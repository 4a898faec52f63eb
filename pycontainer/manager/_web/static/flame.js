// A flame graph from collapsed stacks ("outer;inner;innermost count" lines,
// Brendan Gregg's folded format), drawn as SVG: one row per stack depth,
// the root at the bottom, each frame as wide as its share of the samples.
// A click on a frame zooms to it; a click on the root zooms out.
"use strict";

function flameTree(collapsed) {
  const root = { name: "all", value: 0, children: new Map() };
  for (const line of collapsed.split("\n")) {
    const at = line.lastIndexOf(" ");
    const count = Number(line.slice(at + 1));
    if (at < 0 || !count) continue;
    root.value += count;
    let node = root;
    for (const frame of line.slice(0, at).split(";")) {
      let child = node.children.get(frame);
      if (!child) { child = { name: frame, value: 0, children: new Map() }; node.children.set(frame, child); }
      child.value += count;
      node = child;
    }
  }
  return root;
}

function flameDepth(node) {
  let depth = 0;
  for (const child of node.children.values()) depth = Math.max(depth, flameDepth(child));
  return depth + 1;
}

function flameColor(name) {
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `hsl(${10 + (h % 40)}, ${70 + (h % 20)}%, ${55 + (h % 15)}%)`;
}

function flameGraph(el, collapsed, focus) {
  const root = flameTree(collapsed);
  if (!root.value) { el.innerHTML = '<p class="muted">No samples (the container was idle).</p>'; return; }
  let top = root;
  for (const name of focus || []) top = top.children.get(name) || top;
  const rows = flameDepth(top), row = 17, width = el.clientWidth || 1200, height = rows * row;
  const rects = [];
  const draw = (node, x, depth, path) => {
    const w = node.value / top.value * width;
    if (w < 0.5) return;
    const y = height - (depth + 1) * row;
    const share = (node.value / root.value * 100).toFixed(1);
    // "func (/long/path/file.py:12)" labelled "func (file.py:12)".
    const short = node.name.replace(/\((?:[^()]*\/)?([^()/]*)\)$/, "($1)");
    const label = w > 40 ? short.slice(0, Math.floor(w / 6.5)) : "";
    rects.push(`<g data-path="${esc(JSON.stringify(path))}"><title>${esc(node.name)} (${node.value} samples, ${share}%)</title>` +
      `<rect x="${x.toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${row - 1}" fill="${flameColor(node.name)}"/>` +
      `<text x="${(x + 3).toFixed(1)}" y="${y + 12}">${esc(label)}</text></g>`);
    let cx = x;
    for (const child of node.children.values()) {
      draw(child, cx, depth + 1, [...path, child.name]);
      cx += child.value / top.value * width;
    }
  };
  draw(top, 0, 0, focus || []);
  el.innerHTML = `<svg viewBox="0 0 ${width} ${height}" height="${height}">${rects.join("")}</svg>`;
  el.querySelector("svg").addEventListener("click", (e) => {
    const g = e.target.closest("g[data-path]");
    if (!g) return;
    const path = JSON.parse(g.dataset.path);
    flameGraph(el, collapsed, path.length === (focus || []).length ? path.slice(0, -1) : path);
  });
}
