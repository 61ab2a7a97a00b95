//! The box's button and tally LED, on GPIO lines through embedded-hal's traits
//! (linux-embedded-hal's `CdevPin`, the GPIO character device, in production).
//!
//! A press of the button starts or stops the broadcast. The LED says what the box
//! does: off when it does not broadcast, a slow blink while it starts (camera or
//! encoder coming up, joining the network), on when live, a fast blink on an error
//! (the camera gone, the source failed). No `[gpio]` in the config, or no such chip,
//! and the panel is simply not there.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embedded_hal::digital::{InputPin, OutputPin};

/// What the LED shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tally {
    Off,
    Connecting,
    Live,
    Error,
}

impl Tally {
    /// Whether the LED is lit at `now_ms`: slow blink 1 Hz, fast blink 5 Hz.
    pub fn lit(self, now_ms: u64) -> bool {
        match self {
            Tally::Off => false,
            Tally::Live => true,
            Tally::Connecting => (now_ms / 500) % 2 == 0,
            Tally::Error => (now_ms / 100) % 2 == 0,
        }
    }
}

/// GPIO lines from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PanelConfig {
    pub chip: PathBuf,
    pub button: Option<u32>,
    pub led: Option<u32>,
    /// The button pulls its line low when pressed (a switch to ground, with a
    /// pull-up): the usual wiring.
    pub button_active_low: bool,
}

/// How long the button's level must hold before it counts.
const DEBOUNCE_MS: u64 = 30;
/// How often the panel looks at the button and redraws the LED.
const TICK: Duration = Duration::from_millis(10);

/// A button's level, debounced: a change counts once it has held `DEBOUNCE_MS`.
#[derive(Debug, Default)]
pub struct Debouncer {
    stable: bool,
    candidate: bool,
    since_ms: u64,
}

impl Debouncer {
    /// Feeds the raw level at `now_ms`; true on a press (released to pressed).
    pub fn pressed(&mut self, raw: bool, now_ms: u64) -> bool {
        if raw != self.candidate {
            self.candidate = raw;
            self.since_ms = now_ms;
            return false;
        }
        if raw != self.stable && now_ms.saturating_sub(self.since_ms) >= DEBOUNCE_MS {
            self.stable = raw;
            return raw;
        }
        false
    }
}

/// The button and the LED, whichever are wired.
pub struct Panel<B, L> {
    button: Option<B>,
    led: Option<L>,
    active_low: bool,
    debouncer: Debouncer,
    lit: Option<bool>,
    error_said: bool,
}

impl<B: InputPin, L: OutputPin> Panel<B, L> {
    pub fn new(button: Option<B>, led: Option<L>, active_low: bool) -> Panel<B, L> {
        Panel {
            button,
            led,
            active_low,
            debouncer: Debouncer::default(),
            lit: None,
            error_said: false,
        }
    }

    /// One look at the button and one LED update; true if the button was pressed.
    /// A pin that fails is logged once and read as released.
    pub fn tick(&mut self, now_ms: u64, tally: Tally) -> bool {
        let mut pressed = false;
        if let Some(button) = &mut self.button {
            match button.is_high() {
                Ok(high) => pressed = self.debouncer.pressed(high != self.active_low, now_ms),
                Err(e) => self.say_once(&format!("cannot read the button: {e:?}")),
            }
        }
        let lit = tally.lit(now_ms);
        if let Some(led) = &mut self.led {
            if self.lit != Some(lit) {
                let set = if lit { led.set_high() } else { led.set_low() };
                match set {
                    Ok(()) => self.lit = Some(lit),
                    Err(e) => self.say_once(&format!("cannot set the LED: {e:?}")),
                }
            }
        }
        pressed
    }

    fn say_once(&mut self, what: &str) {
        if !self.error_said {
            tracing::warn!("GPIO: {what}");
            self.error_said = true;
        }
    }
}

/// The panel's thread; dropping it stops the thread and turns the LED off.
pub struct PanelHandle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for PanelHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Cdev = linux_embedded_hal::CdevPin;

/// Opens the configured lines and runs the panel: `tally` is asked what to show,
/// `pressed` is told of each press. `None` if there is no such chip (a box without
/// GPIO) or, with a warning, if a line cannot be had.
pub fn start(
    config: &PanelConfig,
    tally: impl Fn() -> Tally + Send + 'static,
    pressed: impl Fn() + Send + 'static,
) -> Option<PanelHandle> {
    if !config.chip.exists() {
        tracing::info!(chip = %config.chip.display(), "no such GPIO chip: no button or LED");
        return None;
    }
    let (button, led) = match open_lines(config) {
        Ok(lines) => lines,
        Err(e) => {
            tracing::warn!(chip = %config.chip.display(), "no button or LED: {e}");
            return None;
        }
    };
    let mut panel = Panel::new(button, led, config.button_active_low);
    let stop = Arc::new(AtomicBool::new(false));
    let thread = std::thread::Builder::new()
        .name("panel".into())
        .spawn({
            let stop = Arc::clone(&stop);
            move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let now_ms = started.elapsed().as_millis() as u64;
                    if panel.tick(now_ms, tally()) {
                        pressed();
                    }
                    std::thread::sleep(TICK);
                }
                panel.tick(started.elapsed().as_millis() as u64, Tally::Off);
            }
        })
        .ok()?;
    tracing::info!(chip = %config.chip.display(), button = ?config.button, led = ?config.led, "panel ready");
    Some(PanelHandle {
        stop,
        thread: Some(thread),
    })
}

fn open_lines(config: &PanelConfig) -> Result<(Option<Cdev>, Option<Cdev>), String> {
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    let mut chip = Chip::new(&config.chip).map_err(|e| e.to_string())?;
    let mut line = |offset: u32, flags, what: &str| -> Result<Cdev, String> {
        let handle = chip
            .get_line(offset)
            .and_then(|l| l.request(flags, 0, "astral"))
            .map_err(|e| format!("{what} line {offset}: {e}"))?;
        Cdev::new(handle).map_err(|e| format!("{what} line {offset}: {e}"))
    };
    let button = config
        .button
        .map(|n| line(n, LineRequestFlags::INPUT, "button"))
        .transpose()?;
    let led = config
        .led
        .map(|n| line(n, LineRequestFlags::OUTPUT, "LED"))
        .transpose()?;
    Ok((button, led))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::convert::Infallible;
    use std::rc::Rc;

    /// A pin the test drives (input) or watches (output).
    #[derive(Clone, Default)]
    struct MockPin(Rc<RefCell<bool>>);

    impl embedded_hal::digital::ErrorType for MockPin {
        type Error = Infallible;
    }
    impl InputPin for MockPin {
        fn is_high(&mut self) -> Result<bool, Infallible> {
            Ok(*self.0.borrow())
        }
        fn is_low(&mut self) -> Result<bool, Infallible> {
            Ok(!*self.0.borrow())
        }
    }
    impl OutputPin for MockPin {
        fn set_low(&mut self) -> Result<(), Infallible> {
            *self.0.borrow_mut() = false;
            Ok(())
        }
        fn set_high(&mut self) -> Result<(), Infallible> {
            *self.0.borrow_mut() = true;
            Ok(())
        }
    }

    fn panel() -> (Panel<MockPin, MockPin>, MockPin, MockPin) {
        let (button, led) = (MockPin::default(), MockPin::default());
        // Active low: released is high.
        *button.0.borrow_mut() = true;
        let panel = Panel::new(Some(button.clone()), Some(led.clone()), true);
        (panel, button, led)
    }

    /// Runs the panel from `from` to `to` ms in 10 ms ticks; the presses seen.
    fn run(p: &mut Panel<MockPin, MockPin>, from: u64, to: u64, tally: Tally) -> usize {
        (from..to).step_by(10).filter(|&t| p.tick(t, tally)).count()
    }

    #[test]
    fn a_press_counts_once_and_bounces_do_not() {
        let (mut p, button, _) = panel();
        assert_eq!(run(&mut p, 0, 100, Tally::Off), 0);
        // Contact bounce: low, high, low within a few ms, then held.
        for (t, level) in [(100, false), (110, true), (120, false)] {
            *button.0.borrow_mut() = level;
            assert!(!p.tick(t, Tally::Off));
        }
        assert_eq!(run(&mut p, 130, 400, Tally::Off), 1, "one press");
        *button.0.borrow_mut() = true;
        assert_eq!(run(&mut p, 400, 600, Tally::Off), 0, "release is no press");
        // A glitch shorter than the debounce time is ignored.
        *button.0.borrow_mut() = false;
        assert!(!p.tick(600, Tally::Off));
        *button.0.borrow_mut() = true;
        assert_eq!(run(&mut p, 610, 800, Tally::Off), 0);
    }

    #[test]
    fn the_led_shows_the_state() {
        let (mut p, _, led) = panel();
        let lit_over = |p: &mut Panel<MockPin, MockPin>, tally, from: u64| {
            (from..from + 1000)
                .step_by(10)
                .filter(|&t| {
                    p.tick(t, tally);
                    *led.0.borrow()
                })
                .count()
        };
        assert_eq!(lit_over(&mut p, Tally::Off, 0), 0);
        assert_eq!(lit_over(&mut p, Tally::Live, 1000), 100);
        // Slow blink: half the time, in two long runs; fast blink: ten short runs.
        assert_eq!(lit_over(&mut p, Tally::Connecting, 2000), 50);
        assert_eq!(lit_over(&mut p, Tally::Error, 3000), 50);
        let changes = |tally: Tally| {
            (0..1000)
                .step_by(10)
                .filter(|&t| tally.lit(t) != tally.lit(t + 10))
                .count()
        };
        assert_eq!((changes(Tally::Connecting), changes(Tally::Error)), (2, 10));
    }

    #[test]
    fn a_panel_without_pins_does_nothing() {
        let mut p: Panel<MockPin, MockPin> = Panel::new(None, None, true);
        assert!(!p.tick(0, Tally::Live));
    }
}
