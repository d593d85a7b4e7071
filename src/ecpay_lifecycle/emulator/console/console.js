// The emulator's console: polls GET /_emulator/overview and drives the admin routes.
// Plain browser JavaScript, no library and nothing fetched from elsewhere. Every value from the
// server is put into the page as text (textContent), never as HTML.
"use strict";

(function () {
  const ADMIN = "/_emulator/";
  const params = new URLSearchParams(window.location.search);
  const POLL_MS = Math.max(100, Number(params.get("poll")) || 1000);
  const MAX_EVENTS = 300;
  const TAIPEI = formatter();

  let since = 0;
  let timer = null;
  let polling = false;
  let again = false;
  let last = null;
  const shown = {};

  function formatter() {
    try {
      const format = new Intl.DateTimeFormat("sv-SE", {
        timeZone: "Asia/Taipei", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
      });
      return (iso) => format.format(new Date(iso));
    } catch (error) {
      return (iso) => iso;
    }
  }

  function when(iso) {
    return iso ? TAIPEI(iso) : "";
  }

  function short(iso) {
    return when(iso).slice(5, 16); // MM-DD HH:MM, in the order table
  }

  // Admin routes take and answer JSON; they accept a JSON content type only.
  async function api(method, route, body) {
    const init = {
      method,
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      cache: "no-store",
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    const response = await fetch(ADMIN + route, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (error) {
      data = { error: text };
    }
    if (!response.ok) {
      const reason = data && data.error ? data.error : response.status + " " + response.statusText;
      throw new Error(reason);
    }
    return data;
  }

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "dataset") {
        for (const [name, item] of Object.entries(value)) {
          if (item !== undefined && item !== null) node.dataset[name] = item;
        }
      }
      else if (key === "className") node.className = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function say(text, kind) {
    const message = document.getElementById("message");
    message.textContent = text;
    message.dataset.kind = kind || "info";
  }

  async function act(description, method, route, body) {
    try {
      const answer = await api(method, route, body);
      say(description, "ok");
      return answer;
    } catch (error) {
      say(description + " failed: " + error.message, "error");
      return null;
    } finally {
      poll();
    }
  }

  // Re-render a part only when its data changed, so a button is not replaced under a click.
  function changed(part, data) {
    const text = JSON.stringify(data);
    if (shown[part] === text) return false;
    shown[part] = text;
    return true;
  }

  function render(view) {
    last = view;
    document.getElementById("now").textContent = when(view.now);
    document.getElementById("next-batch").textContent = when(view.next_batch);
    const batch = document.getElementById("run-batch");
    batch.textContent = "Run the " + when(view.next_batch).slice(11, 16) + " batch";
    batch.title = "Moves the clock to " + when(view.batch_done_at) +
      ": past the batch and its DoAction window (R5)";
    if (changed("choices", view.choices)) renderChoices(view.choices);
    if (changed("merchants", view.merchants)) renderMerchants(view.merchants);
    if (changed("orders", [view.orders, view.now])) renderOrders(view.orders, view.now);
    if (changed("faults", view.faults)) renderFaults(view.faults, view.choices);
    if (changed("landings", view.landings)) renderLandings(view.landings);
    renderEvents(view);
  }

  function fill(select, values, keep) {
    const current = select.value;
    select.replaceChildren(...keep, ...values.map(([value, label]) => el("option", { value }, label)));
    if ([...select.options].some((option) => option.value === current)) select.value = current;
  }

  function renderChoices(choices) {
    fill(document.getElementById("authorize-kind"), choices.kinds.map((k) => [k, k]), []);
    fill(
      document.getElementById("fault-kind"),
      choices.faults.map((f) => [f.value, f.value + (f.applies_change ? " (applied)" : " (not applied)")]),
      [],
    );
    fill(document.getElementById("fault-endpoint"), choices.endpoints.map((e) => [e, e]),
      [el("option", { value: "" }, "any")]);
    fill(document.getElementById("fault-action"), choices.actions.map((a) => [a, a]),
      [el("option", { value: "" }, "any")]);
  }

  function renderMerchants(merchants) {
    const rows = merchants.map((m) =>
      el("tr", { dataset: { merchant: m.merchant_id } },
        el("td", {}, m.merchant_id),
        el("td", {}, m.auto_close ? "on" : "off"),
        el("td", { className: "num", dataset: { field: "balance" } }, m.balance.toLocaleString("en")),
        el("td", {}, m.platform_id || "")));
    document.getElementById("merchant-rows").replaceChildren(...rows);
    fill(document.getElementById("authorize-merchant"),
      merchants.map((m) => [m.merchant_id, m.merchant_id]), []);
  }

  function dayButton(order, label, iso, rule, now, extraSeconds) {
    const days = Math.round((Date.parse(iso) - Date.parse(order.authorized_at)) / 86400000);
    const target = new Date(Date.parse(iso) + extraSeconds * 1000).toISOString();
    const past = Date.parse(target) <= Date.parse(now);
    return el("button", {
      type: "button",
      dataset: { goto: label },
      disabled: past,
      title: rule + ": clock to " + when(target),
      onclick: () => act("Clock to day " + days + " of " + order.merchant_trade_no, "POST", "time", { set: target }),
    }, "day " + days);
  }

  function actionItem(a) {
    return el("li", { dataset: { action: a.action } },
      a.action + " " + a.amount + " · " + short(a.at) + (a.fault ? " · " + a.fault : ""));
  }

  function renderOrders(orders, now) {
    const rows = orders.map((o) => {
      const closeRows = o.close_rows.map((r) => el("li", {}, r.status + " " + r.amount + " · " + short(r.at)));
      const refunds = o.actions.filter((a) => a.action === "R").map(actionItem);
      const others = o.actions.filter((a) => a.action !== "R").map(actionItem);
      const total = o.refunded_total || o.pending_refund_total
        ? el("div", { className: "note" },
          "in effect " + o.refunded_total + (o.pending_refund_total ? ", " + o.pending_refund_total + " until the batch" : ""))
        : null;
      return el("tr", { dataset: { order: o.merchant_id + "/" + o.merchant_trade_no, state: o.state } },
        el("td", {}, o.merchant_id),
        el("td", { dataset: { field: "merchant_trade_no" } }, o.merchant_trade_no),
        el("td", { className: "mono" }, o.trade_no),
        el("td", { dataset: { field: "kind" } }, o.kind),
        el("td", { className: "num" }, o.amount),
        el("td", { dataset: { field: "status" }, title: o.status_chinese }, o.status),
        el("td", { dataset: { field: "state" } }, el("span", { className: "state state-" + o.state }, o.state)),
        el("td", { className: "num", dataset: { field: "closed_amount" } }, o.closed_amount),
        el("td", { dataset: { field: "close_rows" } }, el("ul", { className: "plain" }, ...closeRows)),
        el("td", { dataset: { field: "refunds" } }, el("ul", { className: "plain" }, ...refunds), total),
        el("td", { dataset: { field: "actions" } }, el("ul", { className: "plain" }, ...others)),
        el("td", {}, el("div", { className: "buttons nowrap" },
          dayButton(o, "close_limit", o.deadlines.close_limit, "R6: C refused from here (auto-close off)", now, 0),
          dayButton(o, "notice", o.deadlines.notice, "R7: the day-80 notice (auto-close off)", now, 0),
          dayButton(o, "abandon", o.deadlines.abandon, "R7: just past day 90, abandoned (auto-close off)", now, 1))));
    });
    const body = document.getElementById("order-rows");
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 12, className: "empty" }, "No orders yet.")));
  }

  function renderFaults(faults) {
    const rows = faults.map((f) =>
      el("tr", { dataset: { fault: f.fault, id: f.id } },
        el("td", {}, f.id),
        el("td", { title: applied(f.fault) ? "the request is processed" : "the request is not processed" },
          f.fault + (applied(f.fault) ? " (applied)" : "")),
        el("td", {}, f.endpoint || "any"),
        el("td", {}, f.action || "any"),
        el("td", {}, f.merchant_trade_no || "any"),
        el("td", {}, (f.remaining === null ? "until cleared" : f.remaining) + (f.dormant ? " (waits for a DoAction)" : ""))));
    const body = document.getElementById("fault-rows");
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 6, className: "empty" }, "No fault armed.")));
  }

  function applied(value) {
    const fault = last && last.choices.faults.find((f) => f.value === value);
    return Boolean(fault && fault.applies_change);
  }

  function renderLandings(landings) {
    const items = landings.map((l) =>
      el("li", {}, l.merchant_trade_no + " " + (l.action || "?") + "(" + l.amount + ") lands at " + when(l.at)));
    document.getElementById("landing-rows").replaceChildren(...(items.length ? items : [el("li", { className: "empty" }, "None.")]));
  }

  function renderEvents(view) {
    const list = document.getElementById("event-rows");
    if (view.last_seq < since) {
      // The log restarted (a new server): start over.
      list.replaceChildren();
      since = 0;
      return;
    }
    for (const event of view.events) {
      const classes = ["event", "event-" + event.kind];
      if (event.fault) classes.push("has-fault");
      if (event.refusal || (event.trans_code !== null && event.trans_code !== 1)) classes.push("refused");
      list.prepend(el("li", {
        className: classes.join(" "),
        value: event.seq,
        title: detail(event),
        dataset: { seq: event.seq, kind: event.kind, fault: event.fault || undefined },
      }, el("span", { className: "at" }, when(event.at)), " ", event.text.replace(/^#\d+ \S+ /, "")));
      since = Math.max(since, event.seq);
    }
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
  }

  // What the request and reply held (decrypted inner data: never a HashKey or HashIV).
  function detail(event) {
    const lines = [];
    if (event.request) lines.push("request " + JSON.stringify(event.request));
    if (event.reply) lines.push("reply " + JSON.stringify(event.reply));
    if (event.trans_code !== null) lines.push("TransCode " + event.trans_code);
    return lines.join("\n") || undefined;
  }

  async function poll() {
    if (polling) {
      again = true; // an action finished during this poll: show its effect at once
      return;
    }
    polling = true;
    clearTimeout(timer);
    const connection = document.getElementById("connection");
    try {
      render(await api("GET", "overview?since=" + since));
      connection.textContent = "live";
      connection.dataset.state = "live";
    } catch (error) {
      connection.textContent = "disconnected: " + error.message + " (retrying)";
      connection.dataset.state = "down";
    } finally {
      polling = false;
      timer = setTimeout(poll, again ? 0 : POLL_MS);
      again = false;
    }
  }

  function number(form, name) {
    const text = form.elements[name].value.trim();
    return text === "" ? undefined : Number(text);
  }

  function wire() {
    document.getElementById("run-batch").addEventListener("click", () => {
      if (!last) return;
      act("Ran the batch: clock to " + when(last.batch_done_at), "POST", "time", { set: last.batch_done_at });
    });
    for (const button of document.querySelectorAll("#clock button[data-seconds]")) {
      button.addEventListener("click", () =>
        act("Clock " + button.textContent, "POST", "time", { advance_seconds: Number(button.dataset.seconds) }));
    }
    document.getElementById("authorize-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const number_ = form.elements.merchant_trade_no.value.trim();
      const answer = await act("Authorized " + number_, "POST", "orders", {
        merchant_id: form.elements.merchant_id.value,
        merchant_trade_no: number_,
        amount: number(form, "amount"),
        kind: form.elements.kind.value,
      });
      if (answer) {
        say("Authorized " + number_ + ": TradeNo " + answer.trade_no, "ok");
        form.elements.merchant_trade_no.value = "";
      }
    });
    document.getElementById("fault-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const body = {
        fault: form.elements.fault.value,
        times: form.elements.forever.checked ? null : (number(form, "times") || 1),
        after_do_action: form.elements.after_do_action.checked,
      };
      for (const name of ["endpoint", "action", "merchant_trade_no"]) {
        const value = form.elements[name].value.trim();
        if (value) body[name] = value;
      }
      for (const name of ["seconds", "status_code", "trans_code", "land_after", "writes"]) {
        const value = number(form, name);
        if (value !== undefined) body[name] = value;
      }
      const answer = await act("Armed " + body.fault, "POST", "faults", body);
      if (answer) say("Armed fault #" + answer.id + ": " + body.fault, "ok");
    });
    document.getElementById("fault-clear").addEventListener("click", () =>
      act("Cleared every fault", "DELETE", "faults"));
  }

  document.getElementById("base-url").textContent = window.location.origin;
  wire();
  poll();
})();
