// Patient questionnaire: live conditions, progress, inline checks, draft autosave
// and JSON submission. The form also works without this script (plain POST).
'use strict';

(() => {
  const form = document.getElementById('survey');
  if (!form) return;

  const token = form.dataset.token || '';
  const api = '/api/v1/surveys/' + encodeURIComponent(token);
  const storeKey = 'opros:draft:' + token;
  const questions = Array.from(form.querySelectorAll('.q'));
  const byId = new Map(questions.map((q) => [q.dataset.q, q]));
  const summary = document.getElementById('error-summary');
  const notice = document.getElementById('submit-notice');
  const status = document.getElementById('save-status');
  const bar = document.getElementById('progress');
  const barText = document.getElementById('progress-text');
  const button = form.querySelector('button[type="submit"]');
  const CHOICE_TYPES = ['yes_no', 'single', 'multi', 'scale', 'consent'];
  const NO_CONNECTION = 'Нет соединения, ответы сохранены на устройстве, попробуйте ещё раз';

  // Our own checks and messages replace the browser's tooltips.
  form.noValidate = true;

  const inputs = (q) => Array.from(q.querySelectorAll('input, textarea'));

  // The answer in the shapes the API takes, or undefined when there is none.
  function valueOf(q) {
    const type = q.dataset.type;
    const els = inputs(q);
    if (type === 'multi') {
      const list = els.filter((e) => e.checked).map((e) => e.value);
      return list.length ? list : undefined;
    }
    if (type === 'consent') return els.some((e) => e.checked) ? true : undefined;
    if (CHOICE_TYPES.includes(type)) {
      const picked = els.find((e) => e.checked);
      if (!picked) return undefined;
      return type === 'scale' ? Number(picked.value) : picked.value;
    }
    const text = els.length ? els[0].value.trim() : '';
    if (!text) return undefined;
    if (type === 'number') {
      const n = Number(text.replace(',', '.'));
      return Number.isFinite(n) ? n : text;
    }
    return text;
  }

  function setValue(q, value) {
    const els = inputs(q);
    if (CHOICE_TYPES.includes(q.dataset.type)) {
      let list = [];
      if (Array.isArray(value)) list = value.map(String);
      else if (value === true) list = ['yes'];
      else if (value !== undefined && value !== null && value !== false) list = [String(value)];
      for (const e of els) e.checked = list.includes(e.value);
    } else if (els.length) {
      els[0].value = value === undefined || value === null ? '' : String(value);
    }
  }

  function matches(controller, expected) {
    const v = valueOf(controller);
    if (v === undefined) return false;
    if (Array.isArray(v)) return v.includes(expected);
    if (v === true) return expected === 'yes' || expected === 'true';
    return String(v) === expected;
  }

  // A rule as the questionnaire writes it ({"all": […]}, {"any": […]},
  // {"question", "equals" | "not_equals" | "in" | "gte" | "lte" | "answered"}); the
  // answer of a hidden question counts as none, as on the server.
  function holds(rule) {
    if (!rule || typeof rule !== 'object') return false;
    if (Array.isArray(rule.all)) return rule.all.every(holds);
    if (Array.isArray(rule.any)) return rule.any.some(holds);
    const target = byId.get(rule.question);
    const answered = Boolean(target) && !target.hidden && valueOf(target) !== undefined;
    const text = (v) => (v === true ? 'yes' : v === false ? 'no' : String(v));
    if ('answered' in rule) return answered === Boolean(rule.answered);
    if (!answered) return false;
    if ('equals' in rule) return matches(target, text(rule.equals));
    if ('not_equals' in rule) return !matches(target, text(rule.not_equals));
    if (Array.isArray(rule.in)) return rule.in.some((v) => matches(target, text(v)));
    const n = Number(valueOf(target));
    if (!Number.isFinite(n)) return false;
    if ('gte' in rule) return n >= Number(rule.gte);
    if ('lte' in rule) return n <= Number(rule.lte);
    return false;
  }

  function shownBy(q) {
    if (q.dataset.showIf !== undefined) {
      try {
        return holds(JSON.parse(q.dataset.showIf));
      } catch (_) {
        return false;
      }
    }
    const controller = byId.get(q.dataset.showIfQuestion);
    return Boolean(controller) && !controller.hidden && matches(controller, q.dataset.showIfEquals);
  }

  // Document order equals questionnaire order and conditions point backwards, so
  // one pass settles chains: a question behind a hidden one is hidden too.
  function updateVisibility(force) {
    for (const q of questions) {
      if (!q.dataset.showIfQuestion && q.dataset.showIf === undefined) continue;
      const show = shownBy(q);
      if (show === !q.hidden && !force) continue;
      q.hidden = !show;
      for (const e of inputs(q)) e.disabled = !show;
      if (!show) showError(q, '');
    }
  }

  function updateProgress() {
    const required = questions.filter((q) => !q.hidden && q.dataset.requiredMsg !== undefined);
    const done = required.filter((q) => valueOf(q) !== undefined).length;
    bar.max = Math.max(required.length, 1);
    bar.value = done;
    bar.textContent = done + ' из ' + required.length;
    barText.textContent = done + ' из ' + required.length;
  }

  // The server's rules (survey::validate::normal_phone, is_email), kept in step.
  function isPhone(v) {
    if (typeof v !== 'string' || /[^0-9 ()+-]/.test(v)) return false;
    const plus = (v.match(/\+/g) || []).length;
    if (plus > 1 || (plus === 1 && v[0] !== '+')) return false;
    const digits = v.replace(/\D/g, '');
    if (digits.length === 11) return digits[0] === '7' || (digits[0] === '8' && v[0] !== '+');
    return digits.length === 10 && v[0] !== '+';
  }

  function isEmail(v) {
    if (typeof v !== 'string' || /\s/.test(v) || v.length > 254) return false;
    const at = v.indexOf('@');
    if (at < 1 || v.indexOf('@', at + 1) !== -1) return false;
    const domain = v.slice(at + 1);
    return domain.includes('.') && !domain.startsWith('.') && !domain.endsWith('.') && !domain.includes('..');
  }

  // The message for one visible question, or '' when it is fine.
  function check(q) {
    const v = valueOf(q);
    const el = inputs(q)[0];
    if (q.dataset.type === 'number' && el && el.validity && el.validity.badInput) return 'Введите число';
    if (v === undefined) return q.dataset.requiredMsg || '';
    if (q.dataset.type === 'number') {
      if (typeof v !== 'number') return 'Введите число';
      const min = el.min === '' ? -Infinity : Number(el.min);
      const max = el.max === '' ? Infinity : Number(el.max);
      if (v < min || v > max) return q.dataset.rangeMsg || 'Введите число';
    }
    // ISO dates compare as text; the server checks the same limits.
    if (q.dataset.type === 'date' && q.dataset.rangeMsg && ((el.min && v < el.min) || (el.max && v > el.max))) {
      return q.dataset.rangeMsg;
    }
    const format = el && el.dataset.format;
    if (format === 'phone' && !isPhone(v)) return 'Введите номер телефона, например +7 912 345-67-89';
    if (format === 'email' && !isEmail(v)) return 'Введите адрес электронной почты, например name@example.ru';
    return '';
  }

  function showError(q, message) {
    const box = q.querySelector('.err');
    if (box) {
      box.textContent = message;
      box.hidden = !message;
    }
    q.classList.toggle('q-error', Boolean(message));
    for (const e of inputs(q)) {
      if (message) e.setAttribute('aria-invalid', 'true');
      else e.removeAttribute('aria-invalid');
    }
  }

  function firstInput(q) {
    return inputs(q).find((e) => !e.disabled);
  }

  function titleOf(q) {
    const t = q.querySelector('.q-text');
    return t ? t.textContent : '';
  }

  // Messages next to the fields, a linked list at the top, focus on the first.
  function showErrors(errors, fallback) {
    const wrong = [];
    for (const q of questions) {
      const message = errors[q.dataset.q] || '';
      showError(q, q.hidden ? '' : message);
      if (message && !q.hidden) wrong.push([q, message]);
    }
    summary.replaceChildren();
    if (!wrong.length && !fallback) {
      summary.hidden = true;
      return;
    }
    const heading = document.createElement('h2');
    heading.textContent = 'Проверьте ответы';
    summary.append(heading);
    if (!wrong.length) {
      const p = document.createElement('p');
      p.textContent = fallback;
      summary.append(p);
    }
    const list = document.createElement('ul');
    for (const [q, message] of wrong) {
      const item = document.createElement('li');
      const link = document.createElement('a');
      const target = firstInput(q);
      link.href = '#' + (target ? target.id : q.id);
      link.textContent = titleOf(q) + ' — ' + message;
      item.append(link);
      list.append(item);
    }
    if (wrong.length) summary.append(list);
    summary.hidden = false;
    const target = wrong.length ? firstInput(wrong[0][0]) : null;
    if (target) {
      target.focus();
      target.scrollIntoView({ block: 'center' });
    } else {
      summary.focus();
    }
  }

  function setStatus(text) {
    status.textContent = text;
  }

  function setNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  // Replaces the page content with a server-rendered message template.
  function showOutcome(templateId) {
    const template = document.getElementById(templateId);
    const main = document.getElementById('main');
    if (!template || !main) return;
    clearTimeout(timer);
    main.replaceChildren(template.content.cloneNode(true));
    const heading = main.querySelector('h1');
    if (heading) heading.focus();
    window.scrollTo(0, 0);
  }

  // The questionnaire's messages for these answers, as text (never markup), under
  // the thank-you heading.
  function showNotes(notes) {
    const box = document.querySelector('#main .message');
    if (!box) return;
    for (const note of notes) {
      if (typeof note !== 'string') continue;
      const p = document.createElement('p');
      p.className = 'message-note';
      p.textContent = note;
      box.appendChild(p);
    }
  }

  function collect() {
    const answers = {};
    for (const q of questions) {
      if (q.hidden) continue;
      const v = valueOf(q);
      if (v !== undefined) answers[q.dataset.q] = v;
    }
    return answers;
  }

  // Local copy: the fallback when the network fails; `synced` tells whether the
  // server already holds this exact state.
  function saveLocal(synced) {
    try {
      localStorage.setItem(storeKey, JSON.stringify({ savedAt: Date.now(), synced, answers: collect() }));
    } catch (_) {
      // Private mode or a full storage: the server copy still works.
    }
  }

  function forgetLocal() {
    try {
      localStorage.removeItem(storeKey);
    } catch (_) {
      // Nothing to forget.
    }
  }

  function readLocal() {
    try {
      return JSON.parse(localStorage.getItem(storeKey) || 'null');
    } catch (_) {
      return null;
    }
  }

  let timer = 0;
  let revision = 0;
  let finished = false;

  function timeNow() {
    return new Date().toLocaleTimeString('ru-RU', { hour: '2-digit', minute: '2-digit' });
  }

  async function saveDraft(keepalive) {
    if (finished) return;
    timer = 0;
    const saving = revision;
    try {
      const response = await fetch(api + '/draft', {
        method: 'PUT',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ answers: collect() }),
        credentials: 'same-origin',
        keepalive: Boolean(keepalive),
      });
      if (response.ok) {
        if (saving === revision) saveLocal(true);
        setStatus('Черновик сохранён в ' + timeNow());
      } else if (response.status === 409) {
        finish('tpl-completed');
      } else if (response.status === 410) {
        finish('tpl-expired');
      } else if (response.status === 404) {
        finish('tpl-not-found');
      } else {
        setStatus('Черновик сохранён на устройстве');
      }
    } catch (_) {
      setStatus('Нет соединения, черновик сохранён на устройстве');
    }
  }

  function changed() {
    revision += 1;
    saveLocal(false);
    clearTimeout(timer);
    timer = setTimeout(saveDraft, 800);
  }

  function finish(templateId) {
    finished = true;
    forgetLocal();
    showOutcome(templateId);
  }

  function owner(target) {
    return target && target.closest ? target.closest('.q') : null;
  }

  // «Нет» in a multi question excludes every other option, and the reverse.
  function applyExclusive(input) {
    if (input.type !== 'checkbox' || !input.checked) return;
    const q = owner(input);
    if (!q || q.dataset.type !== 'multi') return;
    const exclusive = input.hasAttribute('data-exclusive');
    for (const other of inputs(q)) {
      if (other !== input && (exclusive || other.hasAttribute('data-exclusive'))) other.checked = false;
    }
  }

  form.addEventListener('change', (event) => {
    const q = owner(event.target);
    applyExclusive(event.target);
    updateVisibility();
    updateProgress();
    if (q && !q.hidden) showError(q, check(q));
    changed();
  });

  form.addEventListener('input', (event) => {
    const q = owner(event.target);
    // Typing only clears a shown error; new errors wait for blur or change.
    if (q && q.classList.contains('q-error') && !check(q)) showError(q, '');
    updateVisibility();
    updateProgress();
    changed();
  });

  form.addEventListener('focusout', (event) => {
    const q = owner(event.target);
    if (!q || q.hidden || (event.relatedTarget && q.contains(event.relatedTarget))) return;
    if (CHOICE_TYPES.includes(q.dataset.type) && valueOf(q) === undefined && !q.classList.contains('q-error')) {
      // Tabbing past an untouched group is not an answer yet; submission will say.
      return;
    }
    showError(q, check(q));
  });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (finished) return;
    updateVisibility();
    const errors = {};
    for (const q of questions) {
      if (q.hidden) continue;
      const message = check(q);
      if (message) errors[q.dataset.q] = message;
    }
    if (Object.keys(errors).length) {
      showErrors(errors);
      return;
    }
    showErrors({});
    setNotice('');
    clearTimeout(timer);
    button.disabled = true;
    setStatus('Отправляем ответы…');
    try {
      const response = await fetch(api + '/submit', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ answers: collect() }),
        credentials: 'same-origin',
      });
      setStatus('');
      if (response.ok) {
        const body = await response.json().catch(() => ({}));
        finish('tpl-done');
        return showNotes(Array.isArray(body.patient_messages) ? body.patient_messages : []);
      }
      if (response.status === 409) return finish('tpl-completed');
      if (response.status === 410) return finish('tpl-expired');
      if (response.status === 404) return finish('tpl-not-found');
      if (response.status === 422) {
        const body = await response.json().catch(() => ({}));
        showErrors(body.errors || {}, body.message || 'Проверьте ответы и отправьте анкету ещё раз');
        return;
      }
      saveLocal(false);
      setNotice('Не удалось отправить анкету. Ответы сохранены на устройстве, попробуйте ещё раз через минуту.');
    } catch (_) {
      saveLocal(false);
      setStatus('');
      setNotice(NO_CONNECTION);
    } finally {
      button.disabled = false;
    }
  });

  // Leaving the page must not lose the last keystrokes.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'hidden' && timer) {
      clearTimeout(timer);
      saveDraft(true);
    }
  });

  function restoreUnsynced() {
    const saved = readLocal();
    if (!saved || saved.synced || !saved.answers || typeof saved.answers !== 'object') return false;
    for (const q of questions) setValue(q, saved.answers[q.dataset.q]);
    return true;
  }

  function today() {
    const d = new Date();
    const pad = (n) => String(n).padStart(2, '0');
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
  }

  for (const el of form.querySelectorAll('input[data-not-future]')) el.max = today();

  const restored = restoreUnsynced();
  // Recompute every condition: restored values may change which questions show.
  updateVisibility(true);
  updateProgress();
  if (restored) {
    setStatus('Восстановлены ответы, сохранённые на этом устройстве');
    changed();
  }
  if (!summary.hidden) summary.focus();
})();
