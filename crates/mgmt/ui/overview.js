// Overview: object totals, and live charts of message rates and queue depths drawn on
// <canvas> (history kept in memory while the page stays open).
import { api, h, fmtNum, fmtRate, get, table, td } from './lib.js';

const HISTORY_MAX = 120; // samples: 10 minutes at one per 5 s
const MIN_SPAN_SECS = 60;

const ago = (secs) => (secs < 120 ? `-${Math.round(secs)} s` : `-${Math.round(secs / 60)} min`);

const RATE_SERIES = [
  ['Publish', 'message_stats.publish_details.rate', '#b3541e'],
  ['Deliver / get', 'message_stats.deliver_get_details.rate', '#1f5fa8'],
  ['Ack', 'message_stats.ack_details.rate', '#2e7d32'],
];
const DEPTH_SERIES = [
  ['Ready', 'queue_totals.messages_ready', '#1f5fa8'],
  ['Unacked', 'queue_totals.messages_unacknowledged', '#b3541e'],
];

const history = []; // {t, values: {path: number}}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// A small line chart: time on x (the samples kept), values on y from 0 to a rounded maximum.
export function drawChart(canvas, series, samples, unit) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 500;
  const height = canvas.clientHeight || 200;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext('2d');
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  const left = 54, right = 8, top = 8, bottom = 20;
  const w = width - left - right, ht = height - top - bottom;
  let max = 0;
  for (const s of samples) for (const [, path] of series) max = Math.max(max, s.values[path] || 0);
  max = niceMax(max);
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5d6875';
  ctx.strokeStyle = '#e3e7ec';
  ctx.lineWidth = 1;
  ctx.textAlign = 'right';
  ctx.textBaseline = 'middle';
  for (let i = 0; i <= 4; i++) {
    const y = top + ht - (ht * i) / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + w, y); ctx.stroke();
    const label = unit === '/s' ? fmtRate((max * i) / 4) : fmtNum(Math.round((max * i) / 4));
    ctx.fillText(label, left - 4, y);
  }
  ctx.textBaseline = 'top';
  // The x axis covers what has been seen, at least a minute (the history starts at page load).
  const now = samples.length ? samples[samples.length - 1].t : 0;
  const seen = samples.length ? (now - samples[0].t) / 1000 : 0;
  const span = Math.max(MIN_SPAN_SECS, seen);
  for (const secs of [0, span / 2, span]) {
    const x = left + w - (w * secs) / span;
    ctx.textAlign = secs === 0 ? 'right' : secs === span ? 'left' : 'center';
    ctx.fillText(secs === 0 ? 'now' : ago(secs), x, top + ht + 4);
  }
  if (samples.length === 0) return;
  ctx.lineWidth = 2;
  for (const [, path, color] of series) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    samples.forEach((s, i) => {
      const x = left + w - (w * Math.min((now - s.t) / 1000, span)) / span;
      const y = top + ht - (ht * (s.values[path] || 0)) / max;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    if (samples.length === 1) ctx.arc(left + w, top + ht - (ht * (samples[0].values[path] || 0)) / max, 2, 0, 7);
    ctx.stroke();
  }
}

function legend(series, data, fmt) {
  return h('div', { class: 'legend' }, series.map(([name, path, color]) =>
    h('span', {}, h('i', { style: `background:${color}` }), `${name}: `, h('b', {}, fmt(get(data, path) || 0)))));
}

export async function render(main) {
  const cards = h('div', { class: 'cards', id: 'totals' });
  const rateCanvas = h('canvas', { id: 'rate-chart' });
  const depthCanvas = h('canvas', { id: 'depth-chart' });
  const rateLegend = h('div');
  const depthLegend = h('div');
  const nodeInfo = h('p', { class: 'muted' });
  main.append(h('h1', {}, 'Overview'), nodeInfo, cards,
    h('div', { class: 'charts' },
      h('div', { class: 'chart' }, h('b', {}, 'Message rates'), rateLegend, rateCanvas),
      h('div', { class: 'chart' }, h('b', {}, 'Queued messages'), depthLegend, depthCanvas)));

  async function refresh() {
    const o = await api('GET', '/api/overview');
    nodeInfo.textContent = `${o.product_name} ${o.product_version} on ${o.node} (statistics every 5 s)`;
    const t = o.object_totals || {};
    const q = o.queue_totals || {};
    const card = (k, v, id) => h('div', { class: 'card' }, h('div', { class: 'k' }, k), h('div', { class: 'v', id }, fmtNum(v)));
    cards.replaceChildren(
      card('Connections', t.connections, 'total-connections'), card('Channels', t.channels, 'total-channels'),
      card('Exchanges', t.exchanges, 'total-exchanges'), card('Queues', t.queues, 'total-queues'),
      card('Consumers', t.consumers, 'total-consumers'), card('Messages', q.messages, 'total-messages'),
      card('Ready', q.messages_ready, 'total-ready'), card('Unacked', q.messages_unacknowledged, 'total-unacked'));
    const values = {};
    for (const [, path] of [...RATE_SERIES, ...DEPTH_SERIES]) values[path] = Number(get(o, path) || 0);
    history.push({ t: Date.now(), values });
    if (history.length > HISTORY_MAX) history.shift();
    rateLegend.replaceChildren(legend(RATE_SERIES, o, fmtRate));
    depthLegend.replaceChildren(legend(DEPTH_SERIES, o, fmtNum));
    drawChart(rateCanvas, RATE_SERIES, history, '/s');
    drawChart(depthCanvas, DEPTH_SERIES, history, '');
  }
  await refresh();
  const onResize = () => {
    drawChart(rateCanvas, RATE_SERIES, history, '/s');
    drawChart(depthCanvas, DEPTH_SERIES, history, '');
  };
  window.addEventListener('resize', onResize);
  return { refresh, stop: () => window.removeEventListener('resize', onResize) };
}

const MIB = 1024 * 1024;
const mib = (n) => `${fmtNum(Math.round((n || 0) / MIB))} MiB`;
const duration = (ms) => {
  const s = Math.floor((ms || 0) / 1000);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${hh}h` : hh ? `${hh}h ${mm}m` : `${mm}m ${s % 60}s`;
};

// Nodes (Warren is one): memory and disk against their alarm limits, descriptors, uptime,
// and the listeners. Needs the monitoring or administrator tag, as the API does.
export async function renderNodes(main) {
  const body = h('div', { id: 'nodes' });
  async function refresh() {
    const nodes = await api('GET', '/api/nodes');
    const alarm = (on) => (on ? ' — alarm' : '');
    body.replaceChildren(
      table(['Node', 'Uptime', 'Memory (limit)', 'Disk free (limit)', 'File descriptors', 'Sockets', 'Threads', 'Cores'],
        nodes.map((n) => h('tr', {}, td(n.name), td(duration(n.uptime)),
          td(`${mib(n.mem_used)} (${mib(n.mem_limit)})${alarm(n.mem_alarm)}`, n.mem_alarm ? 'err' : ''),
          td(`${mib(n.disk_free)} (${mib(n.disk_free_limit)})${alarm(n.disk_free_alarm)}`, n.disk_free_alarm ? 'err' : ''),
          td(`${fmtNum(n.fd_used)} / ${fmtNum(n.fd_total)}`), td(fmtNum(n.sockets_used)),
          td(fmtNum(n.proc_used)), td(fmtNum(n.processors))))),
      h('h2', {}, 'Listeners'),
      table(['Protocol', 'Address', 'Port'],
        (nodes[0]?.listeners || []).map((l) => h('tr', {}, td(l.protocol), td(l.ip_address), td(String(l.port)))),
        'No listeners known'));
  }
  await refresh();
  main.append(h('h1', {}, 'Nodes'), body);
  return { refresh };
}
