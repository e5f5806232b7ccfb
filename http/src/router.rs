//! The routing table: every route, its template (the metrics label) and its methods.

use http::Method;

/// Every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    Events,
    EventsBatch,
    Resource,
}

/// `(template, route, allowed method)` — the single list of what the server answers.
pub const ROUTES: &[(&str, Route, Method)] = &[
    ("/health", Route::Health, Method::GET),
    ("/ready", Route::Ready, Method::GET),
    ("/metrics", Route::Metrics, Method::GET),
    ("/events", Route::Events, Method::POST),
    ("/events/batch", Route::EventsBatch, Method::POST),
    ("/resource/{id}", Route::Resource, Method::GET),
];

pub struct Table {
    router: matchit::Router<usize>,
}

/// A matched route with its path parameters.
pub struct Matched<'p> {
    pub route: Route,
    pub template: &'static str,
    pub method: &'static Method,
    pub params: matchit::Params<'p, 'p>,
}

impl Table {
    pub fn new() -> Self {
        let mut router = matchit::Router::new();
        for (i, (template, _, _)) in ROUTES.iter().enumerate() {
            // The templates are constants checked by the test below.
            let _ = router.insert(*template, i);
        }
        Table { router }
    }

    pub fn at<'p>(&'p self, path: &'p str) -> Option<Matched<'p>> {
        let m = self.router.at(path).ok()?;
        let (template, route, method) = &ROUTES[*m.value];
        Some(Matched { route: *route, template, method, params: m.params })
    }
}

impl Default for Table {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_routes_to_itself() {
        let mut router = matchit::Router::new();
        for (template, _, _) in ROUTES {
            assert!(router.insert(*template, ()).is_ok(), "{template} must be a valid, unique template");
        }
        let t = Table::new();
        assert_eq!(t.at("/events").map(|m| m.route), Some(Route::Events));
        assert_eq!(t.at("/events/batch").map(|m| m.route), Some(Route::EventsBatch));
        let m = t.at("/resource/device-123");
        assert_eq!(m.as_ref().map(|m| m.route), Some(Route::Resource));
        assert_eq!(m.and_then(|m| m.params.get("id").map(str::to_string)).as_deref(), Some("device-123"));
        assert!(t.at("/nope").is_none());
    }
}
