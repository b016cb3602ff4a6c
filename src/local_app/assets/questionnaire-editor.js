// The admin page's questionnaire editor: the portal's questionnaires (create from a
// template, copy, edit, archive, export, import), the editor of one definition with
// its live preview as a phone shows it, and «Опубликовать». It talks to
// /b24/admin/questionnaires with the page's signed session (the `s` field of the
// page's forms) in the X-Opros-Session header. Every element is built with the DOM
// API: what the administrator typed goes in as text, never as markup.
'use strict';

(() => {
  const root = document.getElementById('qe');
  if (!root) return;

  const API = '/b24/admin/questionnaires';
  const PREVIEW_DELAY_MS = 400;
  const NO_CONNECTION = 'Нет связи с сервисом. Проверьте соединение и повторите.';
  const EXPIRED = 'Сеанс страницы истёк. Откройте приложение заново из Битрикс24.';
  const sessionField = document.querySelector('input[name="s"]');
  const session = sessionField ? sessionField.value : '';
  const byId = (id) => document.getElementById(id);

  const listBox = byId('qe-list');
  const status = byId('qe-status');
  const listProblems = byId('qe-list-problems');
  const templateSelect = byId('qe-template');
  const importFile = byId('qe-import-file');
  const importText = byId('qe-import-text');
  const editor = byId('qe-editor');
  const heading = byId('qe-editor-heading');
  const meta = byId('qe-editor-meta');
  const fields = byId('qe-fields');
  const preview = byId('qe-preview');
  const previewStatus = byId('qe-preview-status');
  const publishButton = byId('qe-publish');
  const publishStatus = byId('qe-publish-status');
  const problemsBox = byId('qe-problems');
  const restore = byId('qe-restore');

  const TYPES = [
    ['yes_no', 'Да / нет'],
    ['single', 'Один вариант'],
    ['multi', 'Несколько вариантов'],
    ['text', 'Строка'],
    ['textarea', 'Текст'],
    ['number', 'Число'],
    ['date', 'Дата'],
    ['scale', 'Шкала 0–10'],
    ['consent', 'Согласие'],
  ];
  const TESTS = [
    ['equals', 'равен'],
    ['not_equals', 'не равен'],
    ['in', 'один из'],
    ['gte', 'не меньше'],
    ['lte', 'не больше'],
    ['answered', 'отвечен или нет'],
  ];
  const FLAG_TESTS = ['equals', 'in', 'gte', 'lte'];
  const TEST_NAMES = TESTS.map((t) => t[0]);
  const hasOptions = (type) => type === 'single' || type === 'multi';

  // ---- The service ----------------------------------------------------------

  async function call(method, path, body) {
    const init = {
      method,
      credentials: 'same-origin',
      headers: { 'X-Opros-Session': session, Accept: 'application/json' },
    };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (e) {
      return { ok: false, status: 0, data: null, text: '', message: NO_CONNECTION };
    }
    const text = await response.text().catch(() => '');
    let data = null;
    try {
      data = JSON.parse(text);
    } catch (e) {
      // An HTML page (the preview) or an empty body.
    }
    const result = { ok: response.ok, status: response.status, data, text, response };
    if (!response.ok) {
      result.message = response.status === 401
        ? EXPIRED
        : (data && data.message) || 'Сервис ответил ошибкой ' + response.status + '.';
    }
    return result;
  }

  // ---- Elements ---------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') e.className = value;
      else if (key === 'text') e.textContent = value;
      else if (key === 'data') {
        for (const [name, v] of Object.entries(value)) if (v !== null && v !== undefined) e.dataset[name] = v;
      }
      else if (value === true) e.setAttribute(key, '');
      else e.setAttribute(key, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      e.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return e;
  }

  // Replaces the children of `parent`; lists are flattened, nothing left out.
  function fill(parent, ...children) {
    parent.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  }

  // A button whose visible text is completed for screen readers by `more`
  // («Выше» → «Выше: вопрос 3»).
  function button(text, data, more, cls) {
    return el('button', { type: 'button', class: cls || 'btn btn--light btn--small', data },
      text, more ? el('span', { class: 'sr-only' }, ': ' + more) : null);
  }

  function say(box, text) {
    box.textContent = text || '';
  }

  function when(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    return d.toLocaleString('ru-RU', {
      timeZone: 'Europe/Moscow', day: '2-digit', month: '2-digit', year: 'numeric',
      hour: '2-digit', minute: '2-digit',
    }) + ' МСК';
  }

  // ---- Problems -----------------------------------------------------------------

  // `sections[1].questions[0] (allergies).show_if` → `sections.1.questions.0.show_if`:
  // the key the editor's fields carry in `data-place`.
  function placeKey(place) {
    return String(place || '')
      .replace(/ \([^)]*\)/g, '')
      .replace(/\[(\d+)\]/g, '.$1');
  }

  const PLACE_WORDS = {
    sections: 'раздел', questions: 'вопрос', options: 'вариант', scores: 'балл',
    bands: 'диапазон', messages: 'сообщение', all: 'условие', any: 'условие',
  };
  const FIELD_WORDS = {
    title: 'название', id: 'id', code: 'код', version: 'версия', show_if: 'условие показа',
    flag_if: 'отметка врачу', flag: 'отметка врачу', when: 'условие', min_date: 'самая ранняя дата',
    max_date: 'самая поздняя дата', questions: 'вопросы', bands: 'диапазоны', text: 'текст',
    definition: 'файл анкеты',
  };

  // The place in words: «раздел 2, вопрос 1 (allergies), условие показа».
  function placeWords(place) {
    return String(place || '').split('.').filter(Boolean).map((part) => {
      const m = /^([a-z_]+)\[(\d+)\](.*)$/.exec(part);
      if (m) return (PLACE_WORDS[m[1]] || m[1]) + ' ' + (Number(m[2]) + 1) + m[3];
      return FIELD_WORDS[part] || part;
    }).join(', ');
  }

  // The field a problem's code points at inside its place.
  const CODE_FIELDS = {
    no_title: 'title', bad_id: 'id', duplicate_id: 'id', empty_options: 'options',
    empty_option: 'options', duplicate_option: 'options', bad_option_score: 'options',
    exclusive_not_multi: 'options', options_not_allowed: 'type', bad_range: 'min',
    range_not_allowed: 'type', unit_not_allowed: 'type', bad_max_length: 'max_length',
    max_length_not_allowed: 'type', format_not_allowed: 'type', not_future_not_allowed: 'type',
    date_limit_not_allowed: 'type', bad_date_limit: 'min_date', bad_flag: 'flag_if',
    no_questions: 'sections',
  };

  // The editor's control for a problem: its place (or the nearest enclosing one),
  // the field its code names first.
  function fieldFor(problem) {
    const key = placeKey(problem.place);
    const parts = key.split('.').filter(Boolean);
    const candidates = [];
    if (CODE_FIELDS[problem.code]) candidates.push(parts.concat(CODE_FIELDS[problem.code]).join('.'));
    for (let n = parts.length; n > 0; n -= 1) candidates.push(parts.slice(0, n).join('.'));
    for (const candidate of candidates) {
      const found = fields.querySelector('[data-place="' + CSS.escape(candidate) + '"]');
      if (!found) continue;
      if (found.matches('input, select, textarea, button')) return found;
      const inner = found.querySelector('input, select, textarea, button');
      if (inner) return inner;
    }
    return null;
  }

  function showProblems(box, data, linked) {
    const problems = (data && Array.isArray(data.problems)) ? data.problems : [];
    const items = problems.map((p) => {
      const words = placeWords(p.place);
      const text = (words ? words + ': ' : '') + (p.reason || p.code || '');
      const target = linked ? fieldFor(p) : null;
      if (!target) return el('li', {}, text);
      if (!target.id) target.id = 'qe-x-' + Math.random().toString(36).slice(2);
      return el('li', {}, el('a', { href: '#' + target.id, data: { focus: target.id } }, text));
    });
    fill(box,
      el('h3', { text: (data && data.message) || 'Анкета не принята' }),
      items.length ? el('ul', {}, items) : null,
    );
    box.hidden = false;
    box.focus();
  }

  function hideProblems(box) {
    box.hidden = true;
    box.replaceChildren();
  }

  for (const box of [problemsBox, listProblems]) {
    box.addEventListener('click', (event) => {
      const link = event.target.closest('a[data-focus]');
      if (!link) return;
      const target = byId(link.dataset.focus);
      if (!target) return;
      event.preventDefault();
      target.scrollIntoView({ block: 'center' });
      target.focus();
    });
  }

  // ---- The list -------------------------------------------------------------------

  let items = [];

  async function loadList() {
    const r = await call('GET', API);
    if (!r.ok || !r.data) {
      listBox.replaceChildren(el('p', { class: 'qe-error', text: r.message || 'Список анкет не загрузился.' }));
      return;
    }
    items = Array.isArray(r.data.items) ? r.data.items : [];
    if (Array.isArray(r.data.templates) && r.data.templates.length) {
      const chosen = templateSelect.value;
      templateSelect.replaceChildren(...r.data.templates.map((t) =>
        el('option', { value: t.code }, t.title + ' (' + t.code + ')')));
      if (r.data.templates.some((t) => t.code === chosen)) templateSelect.value = chosen;
    }
    renderList();
  }

  function renderList() {
    if (!items.length) {
      listBox.replaceChildren(el('p', {
        class: 'muted',
        text: 'У клиники пока нет своих анкет: создайте анкету из шаблона или импортируйте файл.',
      }));
      return;
    }
    const rows = items.map((q) => {
      const name = '«' + q.title + '»';
      return el('tr', { class: q.archived ? 'qe-archived' : null },
        el('td', {}, el('strong', {}, q.title), q.archived ? [' ', el('span', { class: 'badge badge--expired' }, 'в архиве')] : null),
        el('td', {}, el('code', {}, q.code)),
        el('td', {}, String(q.version)),
        el('td', { class: 'optional' }, when(q.published_at),
          q.published_by ? el('div', { class: 'muted' }, 'пользователь ' + q.published_by) : null),
        el('td', { class: 'qe-actions' },
          button('Изменить', { action: 'edit', id: q.id }, name),
          button('Копировать', { action: 'duplicate', id: q.id }, name),
          button(q.archived ? 'Вернуть' : 'В архив', { action: 'archive', id: q.id }, name),
          button('Экспорт', { action: 'export', id: q.id }, name)));
    });
    rows.forEach((row, i) => {
      row.querySelector('[data-action="edit"]').id = 'qe-edit-' + items[i].id;
    });
    listBox.replaceChildren(el('table', { class: 'qe-list' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Анкета'), el('th', { scope: 'col' }, 'Код'),
        el('th', { scope: 'col' }, 'Версия'), el('th', { scope: 'col', class: 'optional' }, 'Опубликована'),
        el('th', { scope: 'col' }, 'Действия'))),
      el('tbody', {}, rows)));
  }

  listBox.addEventListener('click', async (event) => {
    const b = event.target.closest('button[data-action]');
    if (!b) return;
    const id = Number(b.dataset.id);
    const item = items.find((q) => q.id === id);
    if (!item) return;
    hideProblems(listProblems);
    if (b.dataset.action === 'edit') return mayLeave(status) ? open(id) : undefined;
    if (b.dataset.action === 'duplicate') {
      const r = await call('POST', API, { duplicate_of: id });
      if (!r.ok) return say(status, r.message);
      say(status, 'Создана копия: «' + r.data.title + '» (' + r.data.code + ').');
      await loadList();
      // The list was rebuilt: the keyboard goes on from the copy.
      const copy = byId('qe-edit-' + r.data.id);
      if (copy) copy.focus();
      return undefined;
    }
    if (b.dataset.action === 'archive') {
      const r = await call('POST', API + '/' + id + '/archive', { archived: !item.archived });
      if (!r.ok) return say(status, r.message);
      say(status, item.archived
        ? 'Анкета «' + item.title + '» возвращена из архива: робот снова её предлагает.'
        : 'Анкета «' + item.title + '» в архиве: робот её не предлагает, отправленные ссылки работают.');
      await loadList();
      const again = listBox.querySelector('[data-action="archive"][data-id="' + id + '"]');
      if (again) again.focus();
      return undefined;
    }
    if (b.dataset.action === 'export') return exportOne(item);
    return undefined;
  });

  async function exportOne(item) {
    const r = await call('GET', API + '/' + item.id + '/export');
    if (!r.ok) return say(status, r.message);
    const disposition = r.response.headers.get('content-disposition') || '';
    const m = /filename="([^"]+)"/.exec(disposition);
    const name = m ? m[1] : item.code + '.json';
    const url = URL.createObjectURL(new Blob([r.text], { type: 'application/json' }));
    const link = el('a', { href: url, download: name, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    return say(status, 'Скачивается файл ' + name + ': его можно импортировать на другом портале.');
  }

  byId('qe-create').addEventListener('click', async () => {
    if (!mayLeave(status)) return undefined;
    hideProblems(listProblems);
    const code = templateSelect.value;
    const r = await call('POST', API, { from_template: code });
    if (!r.ok) {
      return say(status, r.status === 409
        ? 'Анкета с кодом ' + code + ' у клиники уже есть: измените её или сделайте копию.'
        : r.message);
    }
    say(status, 'Создана анкета «' + r.data.title + '» (' + r.data.code + ').');
    await loadList();
    return edit(r.data);
  });

  byId('qe-import').addEventListener('click', async () => {
    if (!mayLeave(status)) return undefined;
    hideProblems(listProblems);
    let source = importText.value.trim();
    const file = importFile.files && importFile.files[0];
    if (file) source = await file.text();
    if (!source) return say(status, 'Выберите файл анкеты или вставьте её JSON.');
    let definition;
    try {
      definition = JSON.parse(source);
    } catch (e) {
      return say(status, 'Это не JSON: ' + e.message);
    }
    const r = await call('POST', API, { definition });
    if (r.status === 422) return showProblems(listProblems, r.data, false);
    if (!r.ok) {
      return say(status, r.status === 409
        ? 'Анкета с кодом ' + (definition.code || '') + ' у клиники уже есть: измените код в файле или откройте её.'
        : r.message);
    }
    importText.value = '';
    importFile.value = '';
    say(status, 'Импортирована анкета «' + r.data.title + '» (' + r.data.code + ').');
    await loadList();
    return edit(r.data);
  });

  // ---- The editor -------------------------------------------------------------------

  let current = null; // the questionnaire as GET /{id} gave it
  let def = null; // its definition, edited in place
  let dirty = false; // changed since opened or published
  let leaving = false; // asked once to leave unpublished changes

  // Unpublished changes outlive the page's 30-minute session: this tab keeps them
  // (a definition, never a patient's answer) in sessionStorage until they are
  // published or given up, and the editor offers them when the questionnaire is
  // opened again.
  const portalHint = session.split('.')[0];
  const keptKey = () => 'opros:editor:' + portalHint + ':' + current.id;
  function keep() {
    try {
      sessionStorage.setItem(keptKey(), JSON.stringify(def));
    } catch (e) {
      // Storage off or full: nothing is kept.
    }
  }
  function forget() {
    try {
      sessionStorage.removeItem(keptKey());
    } catch (e) {
      // Nothing was kept.
    }
  }
  function kept() {
    try {
      const text = sessionStorage.getItem(keptKey());
      return text ? JSON.parse(text) : null;
    } catch (e) {
      return null;
    }
  }

  // Whether the editor may be closed (or replaced): unpublished changes are given up
  // only when asked twice in a row, nothing modal (a portal's frame may forbid it).
  function mayLeave(box) {
    if (!def || !dirty || leaving) {
      if (def && dirty) forget();
      leaving = false;
      return true;
    }
    leaving = true;
    say(box, 'В анкете «' + (def.title || current.code) + '» есть неопубликованные изменения. '
      + 'Нажмите «Опубликовать» или ещё раз ту же кнопку, чтобы отказаться от них.');
    return false;
  }

  async function open(id) {
    const r = await call('GET', API + '/' + id);
    if (!r.ok || !r.data) return say(status, r.message);
    return edit(r.data);
  }

  function edit(questionnaire) {
    current = questionnaire;
    dirty = false;
    leaving = false;
    def = JSON.parse(JSON.stringify(questionnaire.definition || {}));
    if (!Array.isArray(def.sections)) def.sections = [];
    hideProblems(problemsBox);
    say(publishStatus, '');
    describe();
    render();
    editor.hidden = false;
    heading.textContent = 'Редактор анкеты «' + (def.title || current.code) + '»';
    heading.focus();
    schedulePreview(0);
    offerKept();
  }

  // The changes this tab kept for the questionnaire, if they differ from its
  // latest version: one button brings them back.
  function offerKept() {
    const saved = kept();
    if (!saved || JSON.stringify(saved) === JSON.stringify(def)) {
      restore.hidden = true;
      restore.replaceChildren();
      return;
    }
    const back = button('Вернуть неопубликованные изменения', { restore: '1' }, null, 'btn btn--light');
    fill(restore, el('p', {}, 'В этой вкладке остались неопубликованные изменения этой анкеты.'), back);
    restore.hidden = false;
    back.addEventListener('click', () => {
      def = saved;
      restore.hidden = true;
      restore.replaceChildren();
      render();
      heading.focus();
      schedulePreview();
    });
  }

  function describe() {
    const versions = Array.isArray(current.versions) ? current.versions : [];
    const last = versions[versions.length - 1];
    meta.textContent = 'Код ' + current.code
      + (last ? ' · версия ' + last.version + ' от ' + when(last.published_at) : '')
      + (current.archived ? ' · в архиве' : '');
  }

  byId('qe-close').addEventListener('click', () => {
    if (!mayLeave(publishStatus)) return;
    editor.hidden = true;
    const back = current && byId('qe-edit-' + current.id);
    current = null;
    def = null;
    if (back) back.focus();
  });

  // Paths into the definition: ['sections', 0, 'questions', 2, 'title'].
  const at = (path) => path.reduce((o, k) => (o == null ? undefined : o[k]), def);
  function put(path, value) {
    const parent = at(path.slice(0, -1));
    const key = path[path.length - 1];
    if (parent == null) return;
    if (value === undefined) delete parent[key];
    else parent[key] = value;
  }
  const idOf = (path) => 'qe-f-' + path.join('-');
  const placeOf = (path) => path.join('.');

  // A labelled control bound to `path`. kind: text, textarea, number, bool, list,
  // select (opts.choices). Empty optional fields are left out of the definition.
  function field(path, label, kind, opts) {
    const o = opts || {};
    const id = idOf(path);
    const value = at(path);
    const data = { path: JSON.stringify(path), kind, optional: o.optional ? '1' : null, rerender: o.rerender ? '1' : null };
    let control;
    if (kind === 'textarea') {
      control = el('textarea', { id, rows: o.rows || 2, data }, value == null ? '' : String(value));
    } else if (kind === 'select') {
      control = el('select', { id, data }, o.choices.map(([v, text]) => el('option', { value: v }, text)));
      control.value = value == null ? '' : String(value);
    } else if (kind === 'bool') {
      control = el('input', { type: 'checkbox', id, data });
      control.checked = Boolean(value);
      return el('div', { class: 'qe-field qe-field--check', data: { place: placeOf(path) } },
        control, el('label', { for: id }, label));
    } else {
      const shown = kind === 'list' && Array.isArray(value) ? value.join(', ') : value;
      control = el('input', {
        id, type: kind === 'number' ? 'number' : 'text', step: kind === 'number' ? 'any' : null,
        inputmode: kind === 'number' ? 'decimal' : null, data, placeholder: o.placeholder,
        'aria-describedby': o.hint ? id + '-hint' : null, spellcheck: o.code ? 'false' : null,
      });
      control.value = shown == null ? '' : String(shown);
    }
    return el('div', { class: 'qe-field' + (o.wide ? ' qe-field--wide' : ''), data: { place: placeOf(path) } },
      el('label', { for: id }, label), control,
      o.hint ? el('span', { class: 'qe-hint', id: id + '-hint' }, o.hint) : null);
  }

  function read(control) {
    const kind = control.dataset.kind;
    const optional = control.dataset.optional === '1';
    if (kind === 'bool') return control.checked ? true : undefined;
    const raw = control.value;
    if (kind === 'number') {
      if (raw.trim() === '') return undefined;
      const n = Number(raw.replace(',', '.'));
      return Number.isFinite(n) ? n : undefined;
    }
    if (kind === 'list') {
      const list = raw.split(',').map((s) => s.trim()).filter(Boolean);
      return list.length || !optional ? list : undefined;
    }
    if (kind === 'json') return undefined; // read by `readJson`
    if (optional && raw.trim() === '') return undefined;
    return raw;
  }

  function onChange(event) {
    const control = event.target;
    if (!def || !control.dataset || !control.dataset.path) return;
    const path = JSON.parse(control.dataset.path);
    if (control.dataset.kind === 'json') return readJson(control, path);
    if (control.dataset.kind === 'test') return setTest(path, control.value);
    if (control.dataset.kind === 'mode') return setMode(path, control.value, control.dataset.flag === '1');
    if (control.dataset.kind === 'scoreq') {
      const raw = control.value.trim();
      put(path, raw === 'all' ? 'all' : raw.split(',').map((s) => s.trim()).filter(Boolean));
      return schedulePreview();
    }
    if (control.dataset.kind === 'value') return setValue(path, control);
    if (control.dataset.kind === 'flagtest') return setFlagTest(path, control.value);
    if (control.dataset.kind === 'flagvalue') return setFlagValue(path, control.value);
    const before = at(path);
    put(path, read(control));
    if (path[path.length - 1] === 'type' && before !== at(path)) retype(path.slice(0, -1));
    if (path[path.length - 1] === 'title' && path.length === 1) {
      heading.textContent = 'Редактор анкеты «' + (def.title || current.code) + '»';
    }
    if (control.dataset.rerender === '1') render();
    return schedulePreview();
  }
  fields.addEventListener('input', (event) => {
    if (event.target.matches('input[type="text"], input[type="number"], textarea')) onChange(event);
  });
  fields.addEventListener('change', (event) => {
    if (event.target.matches('select, input[type="checkbox"]')) onChange(event);
  });

  // A question changed its type: what the new type cannot have goes.
  function retype(path) {
    const q = at(path);
    if (!hasOptions(q.type)) delete q.options;
    else if (!Array.isArray(q.options) || !q.options.length) {
      q.options = [{ value: 'yes', label: 'Да' }, { value: 'no', label: 'Нет' }];
    }
    if (q.type !== 'number') { delete q.min; delete q.max; delete q.unit; }
    if (q.type !== 'date') { delete q.min_date; delete q.max_date; delete q.not_future; }
    if (q.type !== 'text' && q.type !== 'textarea') delete q.max_length;
    if (q.type !== 'text') delete q.format;
    if (q.type === 'single' && Array.isArray(q.options)) q.options.forEach((o) => { delete o.exclusive; });
    render();
  }

  // ---- Conditions ---------------------------------------------------------------------

  const testOf = (cond) => TEST_NAMES.find((t) => cond && Object.prototype.hasOwnProperty.call(cond, t));
  const isGroup = (cond) => cond && (Array.isArray(cond.all) || Array.isArray(cond.any));

  function questionChoices(exceptId) {
    const list = [];
    (def.sections || []).forEach((s) => (s.questions || []).forEach((q) => {
      if (q.id !== exceptId) list.push([q.id, q.id + ' — ' + (q.title || '').slice(0, 50)]);
    }));
    return list;
  }
  const questionById = (id) => {
    for (const s of def.sections || []) for (const q of s.questions || []) if (q.id === id) return q;
    return null;
  };

  // The compared value as the definition keeps it for this question's answers.
  function valueFor(question, test, raw) {
    if (test === 'gte' || test === 'lte') {
      const n = Number(String(raw).replace(',', '.'));
      return Number.isFinite(n) ? n : 0;
    }
    if (test === 'answered') return raw === 'true';
    const one = (s) => {
      const t = s.trim();
      if (question && (question.type === 'number' || question.type === 'scale') && t !== '' && Number.isFinite(Number(t))) return Number(t);
      return t;
    };
    if (test === 'in') return String(raw).split(',').map(one).filter((v) => v !== '');
    return one(String(raw));
  }

  function setTest(path, test) {
    const cond = at(path);
    const old = testOf(cond);
    const question = questionById(cond.question);
    const before = old ? cond[old] : '';
    if (old) delete cond[old];
    const text = Array.isArray(before) ? before.join(', ') : (before === true ? 'true' : String(before == null ? '' : before));
    cond[test] = valueFor(question, test, test === 'answered' ? 'true' : text);
    render();
    schedulePreview();
  }

  function setValue(path, control) {
    const cond = at(path);
    const test = testOf(cond);
    if (!test) return;
    cond[test] = valueFor(questionById(cond.question), test, control.value);
    schedulePreview();
  }

  function readJson(control, path) {
    const error = byId(control.id + '-error');
    try {
      put(path, JSON.parse(control.value));
      control.removeAttribute('aria-invalid');
      if (error) error.textContent = '';
      schedulePreview();
    } catch (e) {
      control.setAttribute('aria-invalid', 'true');
      if (error) error.textContent = 'Это не JSON: ' + e.message;
    }
  }

  function newCondition(exceptId) {
    const first = questionChoices(exceptId)[0];
    return { question: first ? first[0] : '', answered: true };
  }

  // Mode of the condition at `path`: none, one, all, any.
  function setMode(path, mode, optional) {
    const cond = at(path);
    const ownerId = path[0] === 'sections' ? at(path.slice(0, -1)).id : null;
    const list = isGroup(cond) ? (cond.all || cond.any) : (cond ? [cond] : []);
    if (mode === 'none' && optional) put(path, undefined);
    else if (mode === 'one') put(path, list[0] && !isGroup(list[0]) ? list[0] : newCondition(ownerId));
    else if (mode === 'all' || mode === 'any') {
      put(path, { [mode]: list.length ? list : [newCondition(ownerId)] });
    }
    render();
    schedulePreview();
  }

  function modeOf(cond) {
    if (!cond) return 'none';
    if (Array.isArray(cond.all)) return 'all';
    if (Array.isArray(cond.any)) return 'any';
    return 'one';
  }

  // One `{question, <test>: value}` row.
  function conditionRow(path, ownerId, allowed, label) {
    const cond = at(path);
    const id = idOf(path);
    if (isGroup(cond) || !testOf(cond)) {
      // A nested group (or something the rows do not show) is edited as JSON.
      return el('div', { class: 'qe-field qe-field--wide', data: { place: placeOf(path) } },
        el('label', { for: id + '-json' }, label + ' (JSON)'),
        el('textarea', { id: id + '-json', rows: 3, spellcheck: 'false', data: { path: JSON.stringify(path), kind: 'json' } },
          JSON.stringify(cond)),
        el('span', { class: 'qe-error', id: id + '-json-error', role: 'status' }));
    }
    const test = testOf(cond);
    const question = questionById(cond.question);
    const choices = questionChoices(ownerId);
    if (cond.question && !choices.some((c) => c[0] === cond.question)) {
      choices.unshift([cond.question, cond.question + ' — нет такого вопроса']);
    }
    const qSelect = el('select', { id: id + '-question', data: { path: JSON.stringify(path.concat('question')), kind: 'text', rerender: '1' } },
      choices.map(([v, t]) => el('option', { value: v }, t)));
    qSelect.value = cond.question || '';
    const tSelect = el('select', { id: id + '-test', data: { path: JSON.stringify(path), kind: 'test' } },
      TESTS.filter((t) => allowed.includes(t[0])).map(([v, t]) => el('option', { value: v }, t)));
    tSelect.value = test;
    const vPath = JSON.stringify(path);
    let value;
    const valueId = id + '-value';
    const raw = cond[test];
    const options = question && hasOptions(question.type) ? question.options || []
      : question && (question.type === 'yes_no' || question.type === 'consent')
        ? [{ value: 'yes', label: 'да' }, { value: 'no', label: 'нет' }] : null;
    if (test === 'answered') {
      value = el('select', { id: valueId, data: { path: vPath, kind: 'value' } },
        el('option', { value: 'true' }, 'отвечен'), el('option', { value: 'false' }, 'не отвечен'));
      value.value = raw === false ? 'false' : 'true';
    } else if ((test === 'equals' || test === 'not_equals') && options) {
      value = el('select', { id: valueId, data: { path: vPath, kind: 'value' } },
        options.map((o) => el('option', { value: o.value }, o.label + ' (' + o.value + ')')));
      value.value = raw === true ? 'yes' : raw === false ? 'no' : String(raw);
    } else {
      value = el('input', {
        id: valueId, type: test === 'gte' || test === 'lte' ? 'number' : 'text', step: 'any',
        data: { path: vPath, kind: 'value' }, 'aria-describedby': test === 'in' ? valueId + '-hint' : null,
      });
      value.value = Array.isArray(raw) ? raw.join(', ') : String(raw == null ? '' : raw);
    }
    return el('div', { class: 'qe-cond-row', data: { place: placeOf(path) } },
      el('div', { class: 'qe-field' }, el('label', { for: id + '-question' }, label + ': вопрос'), qSelect),
      el('div', { class: 'qe-field' }, el('label', { for: id + '-test' }, 'Проверка'), tSelect),
      el('div', { class: 'qe-field' }, el('label', { for: valueId }, 'Значение'), value,
        test === 'in' ? el('span', { class: 'qe-hint', id: valueId + '-hint' }, 'значения через запятую') : null));
  }

  // A condition with its mode: `show_if` may be absent («всегда»), a message's
  // `when` may not.
  function conditionBlock(path, legend, ownerId, optional) {
    const cond = at(path);
    const mode = modeOf(cond);
    const id = idOf(path);
    const modes = [
      optional ? ['none', 'всегда'] : null,
      ['one', 'при условии'],
      ['all', 'если выполнены все условия'],
      ['any', 'если выполнено хотя бы одно условие'],
    ].filter(Boolean);
    const modeSelect = el('select', { id: id + '-mode', data: { path: JSON.stringify(path), kind: 'mode', flag: optional ? '1' : null } },
      modes.map(([v, t]) => el('option', { value: v }, t)));
    modeSelect.value = mode;
    const rows = [];
    if (mode === 'one') rows.push(conditionRow(path, ownerId, TEST_NAMES, 'Условие'));
    if (mode === 'all' || mode === 'any') {
      const list = cond[mode];
      list.forEach((_, i) => {
        const p = path.concat(mode, i);
        rows.push(el('div', { class: 'qe-cond-item' },
          conditionRow(p, ownerId, TEST_NAMES, 'Условие ' + (i + 1)),
          button('Удалить условие', { op: 'remove', path: JSON.stringify(p) }, 'условие ' + (i + 1))));
      });
      rows.push(button('Добавить условие', { op: 'add', path: JSON.stringify(path.concat(mode)), make: 'condition', owner: ownerId || '' }, legend));
    }
    return el('fieldset', { class: 'qe-cond', data: { place: placeOf(path) } },
      el('legend', {}, legend),
      el('div', { class: 'qe-field' }, el('label', { for: id + '-mode' }, 'Когда'), modeSelect),
      rows);
  }

  // `flag_if`: one test of the question's own answer, and the doctor's label.
  function flagBlock(path, q) {
    const p = path.concat('flag_if');
    const id = idOf(p);
    const flag = q.flag_if;
    const test = flag ? FLAG_TESTS.find((t) => Object.prototype.hasOwnProperty.call(flag, t)) : '';
    const select = el('select', { id: id + '-test', data: { path: JSON.stringify(path), kind: 'flagtest' } },
      el('option', { value: '' }, 'не отмечать'),
      TESTS.filter((t) => FLAG_TESTS.includes(t[0])).map(([v, t]) => el('option', { value: v }, 'если ответ ' + t)));
    select.value = test || '';
    const parts = [el('div', { class: 'qe-field' }, el('label', { for: id + '-test' }, 'Отметить врачу'), select)];
    if (q.flag) {
      parts.push(el('p', { class: 'qe-hint' }, 'У вопроса есть отметка в прежнем формате (flag): она сохранится. ',
        button('Удалить прежнюю отметку', { op: 'drop-flag', path: JSON.stringify(path) }, 'вопрос ' + q.id)));
    }
    if (test) {
      const raw = flag[test];
      const value = el('input', {
        id: id + '-value', type: test === 'gte' || test === 'lte' ? 'number' : 'text', step: 'any',
        data: { path: JSON.stringify(p), kind: 'flagvalue' },
      });
      value.value = Array.isArray(raw) ? raw.join(', ') : String(raw == null ? '' : raw);
      parts.push(el('div', { class: 'qe-field' }, el('label', { for: id + '-value' },
        test === 'in' ? 'Значения через запятую' : 'Значение'), value));
      parts.push(field(p.concat('label'), 'Подпись для врача', 'text', { optional: true }));
    }
    return el('fieldset', { class: 'qe-cond', data: { place: placeOf(p) } }, el('legend', {}, 'Отметка врачу'), parts);
  }

  function setFlagTest(path, test) {
    const q = at(path);
    const old = q.flag_if || {};
    const oldTest = FLAG_TESTS.find((t) => Object.prototype.hasOwnProperty.call(old, t));
    if (!test) delete q.flag_if;
    else {
      const next = {};
      const first = hasOptions(q.type) && q.options && q.options[0] ? q.options[0].value : 'yes';
      const before = oldTest ? old[oldTest] : first;
      next[test] = valueFor(q, test, Array.isArray(before) ? before.join(', ') : String(before));
      if (old.label) next.label = old.label;
      q.flag_if = next;
    }
    render();
    schedulePreview();
  }

  function setFlagValue(path, raw) {
    const flag = at(path);
    const test = FLAG_TESTS.find((t) => Object.prototype.hasOwnProperty.call(flag, t));
    if (!test) return;
    flag[test] = valueFor(at(path.slice(0, -1)), test, raw);
    schedulePreview();
  }

  // ---- The form ------------------------------------------------------------------------

  function optionsBlock(path, q) {
    const list = q.options || [];
    const rows = list.map((o, i) => {
      const p = path.concat('options', i);
      const n = 'вариант ' + (i + 1) + ' вопроса ' + q.id;
      return el('li', { class: 'qe-option', data: { place: placeOf(p) } },
        field(p.concat('value'), 'Значение', 'text', { code: true }),
        field(p.concat('label'), 'Подпись', 'text'),
        field(p.concat('score'), 'Балл', 'number', { optional: true }),
        q.type === 'multi' ? field(p.concat('exclusive'), 'Только отдельно', 'bool') : null,
        el('div', { class: 'qe-row-actions' },
          button('Выше', { op: 'up', path: JSON.stringify(p) }, n),
          button('Ниже', { op: 'down', path: JSON.stringify(p) }, n),
          button('Удалить', { op: 'remove', path: JSON.stringify(p) }, n)));
    });
    return el('fieldset', { class: 'qe-options', data: { place: placeOf(path.concat('options')) } },
      el('legend', {}, 'Варианты ответа'),
      el('ol', { class: 'qe-list-plain' }, rows),
      button('Добавить вариант', { op: 'add', path: JSON.stringify(path.concat('options')), make: 'option' }, 'вопрос ' + q.id));
  }

  function limitsBlock(path, q) {
    const parts = [];
    if (q.type === 'number') {
      parts.push(field(path.concat('min'), 'Не меньше', 'number', { optional: true }),
        field(path.concat('max'), 'Не больше', 'number', { optional: true }),
        field(path.concat('unit'), 'Единица измерения', 'text', { optional: true, placeholder: 'кг' }));
    }
    if (q.type === 'date') {
      const hint = 'от сегодняшнего дня: today, -1d, +30d, -6m, -120y';
      parts.push(field(path.concat('min_date'), 'Самая ранняя дата', 'text', { optional: true, hint, code: true }),
        field(path.concat('max_date'), 'Самая поздняя дата', 'text', { optional: true, hint, code: true }),
        field(path.concat('not_future'), 'Не позже сегодняшнего дня', 'bool'));
    }
    if (q.type === 'text' || q.type === 'textarea') {
      parts.push(field(path.concat('max_length'), 'Наибольшая длина, символов', 'number', { optional: true }));
    }
    if (q.type === 'text') {
      parts.push(field(path.concat('format'), 'Формат', 'select', {
        optional: true, choices: [['', 'любой текст'], ['phone', 'телефон'], ['email', 'e-mail']],
      }));
    }
    return parts.length ? el('div', { class: 'qe-grid' }, parts) : null;
  }

  function questionCard(path, q, n) {
    const name = 'вопрос ' + n;
    return el('fieldset', { class: 'qe-question', data: { place: placeOf(path) } },
      el('legend', {}, 'Вопрос ' + n + (q.id ? ' (' + q.id + ')' : '')),
      el('div', { class: 'qe-grid' },
        field(path.concat('id'), 'id', 'text', { code: true }),
        field(path.concat('type'), 'Тип ответа', 'select', { choices: TYPES })),
      field(path.concat('title'), 'Текст вопроса', 'textarea', { wide: true }),
      field(path.concat('hint'), 'Подсказка', 'textarea', { optional: true, wide: true }),
      field(path.concat('required'), 'Обязательный вопрос', 'bool'),
      hasOptions(q.type) ? optionsBlock(path, q) : null,
      limitsBlock(path, q),
      conditionBlock(path.concat('show_if'), 'Показывать вопрос', q.id, true),
      flagBlock(path, q),
      el('div', { class: 'qe-row-actions' },
        button('Выше', { op: 'up', path: JSON.stringify(path) }, name),
        button('Ниже', { op: 'down', path: JSON.stringify(path) }, name),
        button('Удалить вопрос', { op: 'remove', path: JSON.stringify(path) }, name)));
  }

  function sectionBlock(si) {
    const path = ['sections', si];
    const s = def.sections[si];
    const questions = Array.isArray(s.questions) ? s.questions : (s.questions = []);
    const before = def.sections.slice(0, si).reduce((n, x) => n + (x.questions || []).length, 0);
    const name = 'раздел ' + (si + 1);
    return el('fieldset', { class: 'qe-section', data: { place: placeOf(path) } },
      el('legend', {}, 'Раздел ' + (si + 1)),
      el('div', { class: 'qe-grid' },
        field(path.concat('id'), 'id раздела', 'text', { code: true }),
        field(path.concat('title'), 'Название раздела', 'text')),
      questions.map((q, qi) => questionCard(path.concat('questions', qi), q, before + qi + 1)),
      el('div', { class: 'qe-row-actions' },
        button('Добавить вопрос', { op: 'add', path: JSON.stringify(path.concat('questions')), make: 'question' }, name, 'btn btn--light'),
        button('Раздел выше', { op: 'up', path: JSON.stringify(path) }, name),
        button('Раздел ниже', { op: 'down', path: JSON.stringify(path) }, name),
        button('Удалить раздел', { op: 'remove', path: JSON.stringify(path) }, name)));
  }

  function scoresBlock() {
    const scores = Array.isArray(def.scores) ? def.scores : [];
    return el('fieldset', { class: 'qe-section', data: { place: 'scores' } },
      el('legend', {}, 'Баллы'),
      el('p', { class: 'qe-hint' }, 'Сумма баллов вариантов ответа; диапазоны без пропусков и пересечений. Пациент баллов не видит.'),
      scores.map((s, i) => {
        const path = ['scores', i];
        const name = 'балл ' + (i + 1);
        const questions = s.questions === 'all' ? 'all' : (Array.isArray(s.questions) ? s.questions.join(', ') : '');
        const qid = idOf(path.concat('questions'));
        return el('fieldset', { class: 'qe-question', data: { place: placeOf(path) } },
          el('legend', {}, 'Балл ' + (i + 1)),
          el('div', { class: 'qe-grid' },
            field(path.concat('id'), 'id', 'text', { code: true }),
            field(path.concat('title'), 'Название', 'text')),
          el('div', { class: 'qe-field qe-field--wide', data: { place: placeOf(path.concat('questions')) } },
            el('label', { for: qid }, 'Вопросы'),
            (() => {
              const input = el('input', { id: qid, type: 'text', spellcheck: 'false', 'aria-describedby': qid + '-hint', data: { path: JSON.stringify(path.concat('questions')), kind: 'scoreq' } });
              input.value = questions;
              return input;
            })(),
            el('span', { class: 'qe-hint', id: qid + '-hint' }, 'id через запятую или all — все вопросы с баллами')),
          el('fieldset', { class: 'qe-options', data: { place: placeOf(path.concat('bands')) } },
            el('legend', {}, 'Диапазоны'),
            el('ol', { class: 'qe-list-plain' }, (s.bands || []).map((_, b) => {
              const p = path.concat('bands', b);
              const n = 'диапазон ' + (b + 1) + ', ' + name;
              return el('li', { class: 'qe-option', data: { place: placeOf(p) } },
                field(p.concat('from'), 'От', 'number'),
                field(p.concat('to'), 'До', 'number'),
                field(p.concat('label'), 'Название', 'text'),
                field(p.concat('flag'), 'Отметить врачу', 'bool'),
                el('div', { class: 'qe-row-actions' }, button('Удалить', { op: 'remove', path: JSON.stringify(p) }, n)));
            })),
            button('Добавить диапазон', { op: 'add', path: JSON.stringify(path.concat('bands')), make: 'band' }, name)),
          el('div', { class: 'qe-row-actions' }, button('Удалить балл', { op: 'remove', path: JSON.stringify(path) }, name)));
      }),
      button('Добавить балл', { op: 'add', path: JSON.stringify(['scores']), make: 'score' }, null, 'btn btn--light'));
  }

  function messagesBlock() {
    const messages = Array.isArray(def.messages) ? def.messages : [];
    return el('fieldset', { class: 'qe-section', data: { place: 'messages' } },
      el('legend', {}, 'Сообщения пациенту'),
      el('p', { class: 'qe-hint' }, 'Показываются пациенту после отправки, если выполнено условие; никуда не пересылаются.'),
      messages.map((m, i) => {
        const path = ['messages', i];
        const name = 'сообщение ' + (i + 1);
        return el('fieldset', { class: 'qe-question', data: { place: placeOf(path) } },
          el('legend', {}, 'Сообщение ' + (i + 1)),
          field(path.concat('text'), 'Текст для пациента', 'textarea', { rows: 3, wide: true }),
          conditionBlock(path.concat('when'), 'Показывать сообщение', null, false),
          el('div', { class: 'qe-row-actions' }, button('Удалить сообщение', { op: 'remove', path: JSON.stringify(path) }, name)));
      }),
      button('Добавить сообщение', { op: 'add', path: JSON.stringify(['messages']), make: 'message' }, null, 'btn btn--light'));
  }

  // Builds the form from `def`, keeping the focus on the same control.
  function render() {
    const focused = document.activeElement && fields.contains(document.activeElement) ? document.activeElement.id : null;
    fill(fields,
      el('fieldset', { class: 'qe-section', data: { place: '' } },
        el('legend', {}, 'Анкета'),
        field(['title'], 'Название анкеты', 'text', { wide: true }),
        field(['description'], 'Описание для пациента', 'textarea', { optional: true, rows: 3, wide: true })),
      def.sections.map((_, si) => sectionBlock(si)),
      button('Добавить раздел', { op: 'add', path: JSON.stringify(['sections']), make: 'section', place: 'sections' }, null, 'btn btn--light'),
      scoresBlock(),
      messagesBlock());
    if (focused && byId(focused)) byId(focused).focus();
  }

  function unusedId(prefix, taken) {
    for (let n = 1; ; n += 1) {
      const id = prefix + '_' + n;
      if (!taken.includes(id)) return id;
    }
  }
  const questionIds = () => (def.sections || []).flatMap((s) => (s.questions || []).map((q) => q.id));

  const MAKERS = {
    section: () => ({
      id: unusedId('section', def.sections.map((s) => s.id)),
      title: 'Новый раздел',
      questions: [MAKERS.question()],
    }),
    question: () => ({ id: unusedId('q', questionIds()), type: 'yes_no', title: 'Новый вопрос', required: false }),
    option: (list) => {
      const n = list.length + 1;
      return { value: unusedId('option', list.map((o) => o.value)), label: 'Вариант ' + n };
    },
    band: (list) => {
      const last = list[list.length - 1];
      const from = last && Number.isFinite(last.to) ? last.to + 1 : 0;
      return { from, to: from + 4, label: 'Новый диапазон' };
    },
    score: () => ({
      id: unusedId('score', (def.scores || []).map((s) => s.id)),
      title: 'Сумма баллов',
      questions: 'all',
      bands: [{ from: 0, to: 100, label: 'Все результаты' }],
    }),
    message: () => ({ when: newCondition(null), text: 'Текст для пациента' }),
    condition: (list, owner) => newCondition(owner || null),
  };

  fields.addEventListener('click', (event) => {
    const b = event.target.closest('button[data-op]');
    if (!b || !def) return;
    const path = JSON.parse(b.dataset.path);
    const op = b.dataset.op;
    let focus = null;
    if (op === 'add') {
      const parentPath = path.slice(0, -1);
      const key = path[path.length - 1];
      const parent = at(parentPath);
      if (!Array.isArray(parent[key])) parent[key] = [];
      const list = parent[key];
      list.push(MAKERS[b.dataset.make](list, b.dataset.owner));
      focus = path.concat(list.length - 1);
    } else if (op === 'drop-flag') {
      delete at(path).flag;
    } else {
      const list = at(path.slice(0, -1));
      const i = path[path.length - 1];
      if (op === 'remove') {
        list.splice(i, 1);
        const listPath = path.slice(0, -1);
        const owner = at(listPath.slice(0, -1));
        if (!list.length && (listPath[listPath.length - 1] === 'scores' || listPath[listPath.length - 1] === 'messages')) {
          delete owner[listPath[listPath.length - 1]];
        }
        if (!list.length && (listPath[listPath.length - 1] === 'all' || listPath[listPath.length - 1] === 'any')) {
          put(listPath.slice(0, -1), listPath[0] === 'messages' ? newCondition(null) : undefined);
        }
        focus = list.length ? path.slice(0, -1).concat(Math.min(i, list.length - 1)) : null;
      } else {
        const j = op === 'up' ? i - 1 : i + 1;
        if (j < 0 || j >= list.length) return;
        [list[i], list[j]] = [list[j], list[i]];
        focus = path.slice(0, -1).concat(j);
      }
    }
    const keepOp = op === 'up' || op === 'down' ? op : null;
    render();
    if (focus) {
      const place = placeOf(focus);
      const block = fields.querySelector('[data-place="' + CSS.escape(place) + '"]');
      const again = keepOp && block
        ? Array.from(block.querySelectorAll('button[data-op="' + keepOp + '"]')).find((x) => x.dataset.path === JSON.stringify(focus))
        : null;
      const target = again || (block && block.querySelector('input, select, textarea'));
      if (target) target.focus();
    } else {
      heading.focus();
    }
    schedulePreview();
  });

  // ---- Preview and publishing --------------------------------------------------------------

  let timer = null;
  let asked = 0;
  let scroll = 0;

  // After a change (no `delay`), or at once when the editor opens.
  function schedulePreview(delay) {
    if (delay === undefined) {
      dirty = true;
      leaving = false;
    }
    clearTimeout(timer);
    timer = setTimeout(refreshPreview, delay === undefined ? PREVIEW_DELAY_MS : delay);
  }

  async function refreshPreview() {
    if (!def) return;
    const mine = ++asked;
    const r = await call('POST', API + '/preview', { definition: def });
    if (mine !== asked || !def) return;
    if (dirty) keep();
    if (r.ok) {
      try {
        scroll = preview.contentWindow ? preview.contentWindow.scrollY : 0;
      } catch (e) {
        scroll = 0;
      }
      preview.srcdoc = r.text;
      say(previewStatus, '');
      preview.dataset.state = 'fresh';
    } else if (r.status === 422 && r.data) {
      const n = Array.isArray(r.data.problems) ? r.data.problems.length : 0;
      const first = n ? ' Первая: ' + placeWords(r.data.problems[0].place) + ' — ' + r.data.problems[0].reason + '.' : '';
      say(previewStatus, 'Предпросмотр не обновлён: ошибок в анкете — ' + n + '.' + first);
      preview.dataset.state = 'stale';
    } else {
      say(previewStatus, 'Предпросмотр не обновлён. ' + r.message);
      preview.dataset.state = 'stale';
    }
  }

  preview.addEventListener('load', () => {
    try {
      if (scroll && preview.contentWindow) preview.contentWindow.scrollTo(0, scroll);
    } catch (e) {
      // The preview is sandboxed; without access it simply starts at the top.
    }
  });

  publishButton.addEventListener('click', async () => {
    if (!def || !current) return;
    hideProblems(problemsBox);
    say(publishStatus, 'Публикуем…');
    publishButton.disabled = true;
    const r = await call('POST', API + '/' + current.id + '/versions', { definition: def });
    publishButton.disabled = false;
    if (r.status === 201 && r.data) {
      say(publishStatus, 'Опубликована версия ' + r.data.version + '.');
      dirty = false;
      forget();
      current.versions = (current.versions || []).concat([r.data]);
      def.version = r.data.version;
      describe();
      await loadList();
      return undefined;
    }
    if (r.status === 422) {
      const n = r.data && Array.isArray(r.data.problems) ? r.data.problems.length : 0;
      say(publishStatus, 'Анкета не опубликована: ошибок — ' + n + '.');
      return showProblems(problemsBox, r.data, true);
    }
    return say(publishStatus, r.message);
  });

  loadList();
})();
