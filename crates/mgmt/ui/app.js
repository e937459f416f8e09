// Entry point: login (basic auth checked against /api/whoami, kept in sessionStorage),
// hash routing to the pages, and the 5-second refresh of the page shown.
import { api, ApiError, basicAuth, session, h } from './lib.js';
import * as overview from './overview.js';
import * as conns from './connections.js';
import * as exchanges from './exchanges.js';
import * as queues from './queues.js';
import * as admin from './admin.js';

export const REFRESH_MS = 5000;

const routes = [
  [/^\/?$/, 'overview', () => overview.render],
  [/^\/connections$/, 'connections', () => conns.renderConnections],
  [/^\/connections\/(.+)$/, 'connections', () => conns.renderConnection],
  [/^\/channels$/, 'channels', () => conns.renderChannels],
  [/^\/channels\/(.+)$/, 'channels', () => conns.renderChannel],
  [/^\/exchanges$/, 'exchanges', () => exchanges.renderList],
  [/^\/exchanges\/([^/]+)\/([^/]*)$/, 'exchanges', () => exchanges.renderDetail],
  [/^\/queues$/, 'queues', () => queues.renderList],
  [/^\/queues\/([^/]+)\/([^/]+)$/, 'queues', () => queues.renderDetail],
  [/^\/nodes$/, 'nodes', () => overview.renderNodes],
  [/^\/admin$/, 'admin', () => admin.renderAdmin],
  [/^\/definitions$/, 'definitions', () => admin.renderDefinitions],
];

let current = null; // {timer, stop}

function stopCurrent() {
  if (!current) return;
  clearInterval(current.timer);
  if (current.stop) current.stop();
  current = null;
}

async function route() {
  stopCurrent();
  const main = document.getElementById('main');
  const path = location.hash.replace(/^#/, '') || '/';
  const found = routes.find(([re]) => re.test(path));
  if (!found) {
    main.replaceChildren(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', path));
    return;
  }
  const [re, page, render] = found;
  const params = path.match(re).slice(1).map(decodeURIComponent);
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
  main.replaceChildren();
  const mine = {};
  current = mine;
  let handle;
  try {
    handle = (await render()(main, ...params)) || {};
  } catch (e) {
    main.append(h('p', { class: 'error' }, e.message));
    return;
  }
  if (current !== mine) { if (handle.stop) handle.stop(); return; }
  mine.stop = handle.stop;
  if (handle.refresh) {
    mine.timer = setInterval(() => {
      if (!document.hidden) handle.refresh().catch(() => {});
    }, REFRESH_MS);
  }
}

function showLogin(message) {
  stopCurrent();
  document.getElementById('shell').hidden = true;
  document.getElementById('login').hidden = false;
  document.getElementById('login-error').textContent = message || '';
  document.getElementById('login-username').focus();
}

async function start() {
  try {
    const me = await api('GET', '/api/whoami');
    document.getElementById('whoami').textContent = me.name;
  } catch (e) {
    session.auth = null;
    showLogin(e instanceof ApiError && e.status !== 401 ? e.message : '');
    return;
  }
  document.getElementById('login').hidden = true;
  document.getElementById('shell').hidden = false;
  route();
}

document.getElementById('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const user = document.getElementById('login-username').value;
  const pass = document.getElementById('login-password').value;
  const auth = basicAuth(user, pass);
  const err = document.getElementById('login-error');
  err.textContent = '';
  try {
    await api('GET', '/api/whoami', undefined, { auth });
  } catch (e) {
    // The API's reason, e.g. "Login failed" (401) or why a user may not use the API (also 401, as RabbitMQ).
    err.textContent = /login failed/i.test(e.message) ? e.message : `Login failed: ${e.message}`;
    return;
  }
  session.auth = auth;
  document.getElementById('login-password').value = '';
  start();
});

document.getElementById('logout').addEventListener('click', () => {
  session.auth = null;
  showLogin('');
});

window.addEventListener('warren-logout', () => { session.auth = null; showLogin('Session expired: log in again.'); });
window.addEventListener('hashchange', () => { if (session.auth) route(); });

if (session.auth) start(); else showLogin('');
