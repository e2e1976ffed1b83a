//! The live view of `pvbackend top`, drawn with ratatui on its crossterm
//! backend (raw mode and the alternate screen, restored on every way out
//! by a guard's drop, a panic unwinding included).
//!
//! One row per guest; the keys in the footer sort by any column (the same
//! key again reverses), ↑/↓ (or j/k) select a guest, Enter (or →, space)
//! expands it into its disks, their queues and its ports, ← collapses, q
//! quits. A guest whose p99 or drops jumped is drawn in red with a `!`.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::time::Instant;

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::{cursor, execute, terminal};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use ratatui::{Frame, Terminal};

use super::rates::Report;
use super::table::{self, SortBy, COLUMNS};
use super::{report, take, Options, Scrape, TopError};

/// Rows the view needs: title, header, two guests, footer.
pub const MIN_HEIGHT: u16 = 8;

/// Leaves raw mode and the alternate screen when dropped.
#[derive(Debug)]
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<Self, TopError> {
        terminal::enable_raw_mode().map_err(TopError::Terminal)?;
        let guard = Self;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )
        .map_err(TopError::Terminal)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = execute!(
            std::io::stdout(),
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// What the view shows and where the operator is in it.
#[derive(Debug)]
pub struct View {
    pub addr: String,
    pub report: Option<Report>,
    pub error: Option<String>,
    pub sort: SortBy,
    pub descending: bool,
    pub selected: usize,
    pub expanded: BTreeSet<String>,
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    Ignore,
}

impl View {
    pub fn new(addr: &str, sort: SortBy) -> Self {
        Self {
            addr: addr.to_owned(),
            report: None,
            error: None,
            sort,
            descending: sort.descending(),
            selected: 0,
            expanded: BTreeSet::new(),
        }
    }

    fn guests(&self) -> usize {
        self.report.as_ref().map_or(0, |r| r.guests.len())
    }

    fn selected_guest(&self) -> Option<String> {
        self.report
            .as_ref()
            .and_then(|r| r.guests.get(self.selected))
            .map(|g| g.guest.clone())
    }

    /// Applies a key.
    pub fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> Action {
        match code {
            KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Action::Redraw
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected = (self.selected + 1).min(self.guests().saturating_sub(1));
                Action::Redraw
            }
            KeyCode::Enter | KeyCode::Right | KeyCode::Char(' ') | KeyCode::Char('+') => {
                if let Some(g) = self.selected_guest() {
                    if !self.expanded.remove(&g) {
                        self.expanded.insert(g);
                    }
                }
                Action::Redraw
            }
            KeyCode::Left | KeyCode::Char('-') => {
                if let Some(g) = self.selected_guest() {
                    self.expanded.remove(&g);
                }
                Action::Redraw
            }
            KeyCode::Char(c) => match SortBy::from_key(c) {
                Some(by) => {
                    if by == self.sort {
                        self.descending = !self.descending;
                    } else {
                        self.sort = by;
                        self.descending = by.descending();
                    }
                    self.resort();
                    Action::Redraw
                }
                None => Action::Ignore,
            },
            _ => Action::Ignore,
        }
    }

    /// Sorts the rows again, keeping the same guest selected.
    fn resort(&mut self) {
        let keep = self.selected_guest();
        if let Some(r) = &mut self.report {
            table::sort(&mut r.guests, self.sort, self.descending);
            if let Some(k) = keep {
                self.selected = r.guests.iter().position(|g| g.guest == k).unwrap_or(0);
            }
        }
    }

    /// A new interval's report.
    pub fn update(&mut self, r: Report) {
        let keep = self.selected_guest();
        self.report = Some(r);
        self.error = None;
        self.resort();
        if keep.is_none() {
            self.selected = 0;
        }
        self.selected = self.selected.min(self.guests().saturating_sub(1));
    }

    /// Draws the view (or, on a terminal too small, one line saying so).
    pub fn draw(&self, f: &mut Frame<'_>) {
        let area = f.area();
        if area.width < table::min_width() || area.height < MIN_HEIGHT {
            let msg = format!(
                "terminal too small: {}x{}, need {}x{} (q quits)",
                area.width,
                area.height,
                table::min_width(),
                MIN_HEIGHT
            );
            f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
            return;
        }
        let [title, body, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(3),
        ])
        .areas(area);
        let sort_name = match self.sort {
            SortBy::Iops => "iops",
            SortBy::Column(i) => COLUMNS.get(i).map_or("?", |c| c.name),
        };
        let arrow = if self.descending { "v" } else { "^" };
        let mut head = format!(
            "pvbackend top  {}  sorted by {sort_name} {arrow}",
            self.addr
        );
        match &self.report {
            Some(r) => head.push_str(&format!(
                "  {} guest(s), rates over {:.1} s",
                r.guests.len(),
                r.interval_secs
            )),
            None => head.push_str("  collecting the first interval..."),
        }
        let mut title_line = Line::from(head);
        if let Some(e) = &self.error {
            title_line.push_span(ratatui::text::Span::styled(
                format!("  error: {e}"),
                Style::new().add_modifier(Modifier::BOLD),
            ));
        }
        f.render_widget(Paragraph::new(title_line), title);

        let header = Row::new(COLUMNS.iter().enumerate().map(|(i, c)| {
            let sorted = self.sort == SortBy::Column(i);
            Cell::from(if sorted {
                format!("{}{arrow}", c.header)
            } else {
                c.header.to_owned()
            })
        }))
        .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
        let mut rows = Vec::new();
        if let Some(r) = &self.report {
            for (i, g) in r.guests.iter().enumerate() {
                let mut cells = table::cells(g);
                let open = self.expanded.contains(&g.guest);
                let mark = match (g.jumped, open) {
                    (true, _) => "!",
                    (false, true) => "-",
                    (false, false) => "+",
                };
                cells[0] = format!("{mark}{}", cells[0]);
                let mut style = Style::new();
                if g.jumped {
                    style = style
                        .fg(ratatui::style::Color::Red)
                        .add_modifier(Modifier::BOLD);
                }
                if i == self.selected {
                    style = style.add_modifier(Modifier::REVERSED);
                }
                rows.push(Row::new(cells).style(style));
                if open {
                    for (_, c) in table::device_rows(g) {
                        rows.push(Row::new(c).style(Style::new().add_modifier(Modifier::DIM)));
                    }
                }
            }
        }
        let widths = COLUMNS.iter().map(|c| Constraint::Length(c.width));
        f.render_widget(
            Table::new(rows, widths).header(header).column_spacing(1),
            body,
        );
        let keys = format!(
            "q quit  up/down select  enter expand/collapse  sort (again: reverse): {}",
            table::key_help()
        );
        f.render_widget(Paragraph::new(keys).wrap(Wrap { trim: true }), footer);
    }
}

/// Runs the live view until `q`.
pub fn run(opts: &Options) -> Result<(), TopError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(TopError::NotATerminal);
    }
    let (width, height) = terminal::size().map_err(TopError::Terminal)?;
    if width < table::min_width() || height < MIN_HEIGHT {
        return Err(TopError::TooSmall {
            width,
            height,
            need_width: table::min_width(),
            need_height: MIN_HEIGHT,
        });
    }
    // The first scrape before the screen is taken: no daemon is a plain
    // one-line error on the normal screen.
    let mut prev: Scrape = take(opts)?;
    let mut previous: Option<Report> = None;
    let mut view = View::new(&opts.metrics, opts.sort);
    let _guard = TerminalGuard::enter()?;
    let mut term =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(TopError::Terminal)?;
    let mut due = Instant::now() + opts.every;
    loop {
        term.draw(|f| view.draw(f)).map_err(TopError::Terminal)?;
        let wait = due.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(TopError::Terminal)? {
            if let Event::Key(k) = event::read().map_err(TopError::Terminal)? {
                if k.kind != KeyEventKind::Release && view.key(k.code, k.modifiers) == Action::Quit
                {
                    return Ok(());
                }
            }
            continue;
        }
        due = Instant::now() + opts.every;
        match take(opts) {
            Ok(cur) => {
                let r = report(&prev, &cur, previous.as_ref(), view.sort, view.descending);
                previous = Some(r.clone());
                view.update(r);
                prev = cur;
            }
            // The daemon went away or restarted: say so and keep trying.
            Err(e) => view.error = Some(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::rates::GuestRow;
    use ratatui::backend::TestBackend;

    fn report() -> Report {
        let g = |name: &str, iops: f64, jumped: bool| GuestRow {
            guest: name.into(),
            read_iops: iops,
            jumped,
            disks: vec![{
                let mut d = crate::top::rates::DiskRates::default();
                d.disk = format!("{name}-root");
                d
            }],
            ..GuestRow::default()
        };
        Report {
            unix_time: 0.0,
            interval_secs: 2.0,
            guests: vec![g("vm-a", 10.0, false), g("vm-b", 99.0, true)],
        }
    }

    fn screen(view: &View, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        t.draw(|f| view.draw(f)).expect("draw");
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    + "\n"
            })
            .collect()
    }

    #[test]
    fn keys_sort_select_expand_and_quit() {
        let mut v = View::new("127.0.0.1:1", SortBy::Iops);
        v.update(report());
        let text = screen(&v, 180, 20);
        let (a, b) = (text.find("vm-a").expect("a"), text.find("vm-b").expect("b"));
        assert!(b < a, "busier first:\n{text}");
        assert!(text.contains("!vm-b"), "jumped guest marked:\n{text}");
        assert_eq!(
            v.key(KeyCode::Char('g'), KeyModifiers::NONE),
            Action::Redraw
        );
        let text = screen(&v, 180, 20);
        assert!(text.find("vm-a") < text.find("vm-b"), "by name:\n{text}");
        assert!(text.contains("GUEST^"), "{text}");
        // The selection followed vm-b (selected first, by IOPS) to its new place.
        assert_eq!(v.selected_guest().as_deref(), Some("vm-b"));
        assert_eq!(v.key(KeyCode::Up, KeyModifiers::NONE), Action::Redraw);
        assert_eq!(v.key(KeyCode::Enter, KeyModifiers::NONE), Action::Redraw);
        assert!(screen(&v, 180, 20).contains("disk vm-a-root"));
        assert!(!screen(&v, 180, 20).contains("disk vm-b-root"));
        assert_eq!(v.key(KeyCode::Left, KeyModifiers::NONE), Action::Redraw);
        assert!(!screen(&v, 180, 20).contains("disk vm-a-root"));
        assert_eq!(v.key(KeyCode::Char('q'), KeyModifiers::NONE), Action::Quit);
        assert_eq!(
            v.key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Action::Quit
        );
        assert_eq!(
            v.key(KeyCode::Char('Z'), KeyModifiers::NONE),
            Action::Ignore
        );
    }

    #[test]
    fn a_small_terminal_gets_a_message_not_a_panic() {
        let mut v = View::new("x", SortBy::Iops);
        v.update(report());
        screen(&v, 1, 1);
        for (w, h) in [(20, 3), (table::min_width() - 1, 30), (200, MIN_HEIGHT - 1)] {
            assert!(screen(&v, w, h).contains("too"), "{w}x{h}");
        }
    }
}
