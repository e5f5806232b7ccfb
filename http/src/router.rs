//! The routing table: every route, its template (the metrics label) and its method.

use http::Method;

use crate::limits::Group;

/// Every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    Events,
    EventsBatch,
    Resource,
    DeadLetters,
    DeadLetter,
    DeadLetterDelete,
    DeadLetterReplay,
    DeadLettersReplay,
    DeadLettersPurge,
    Registration,
    Login,
    Logout,
    Refresh,
    AuthInfo,
    AuthReady,
    AuthHealthz,
    LoyaltyOperation,
    LoyaltyBalance,
    LoyaltyTransactions,
    LoyaltyReady,
    Saga,
    AdminStatusPage,
    AdminStatus,
    AdminFaultPanic,
    Notifications,
    Notification,
    WebhookEndpoints,
    WebhookEndpointCreate,
    WebhookEndpoint,
    WebhookEndpointUpdate,
    WebhookEndpointDelete,
    WebhookEndpointEnable,
    WebhookEndpointDisable,
    WebhookEndpointSecret,
    WebhookEndpointRotate,
    WebhookEndpointAttempts,
    WebhookEndpointStats,
    WebhookDeliveryResend,
    Workflows,
    WorkflowCreate,
    Workflow,
    WorkflowReplace,
    WorkflowDelete,
    WorkflowRunStart,
    WorkflowRuns,
    WorkflowRun,
    Dashboard,
    OpenApi,
    DocsRedirect,
    Docs,
    DocsAsset,
}

impl Route {
    /// In the OpenAPI document (everything but the document and its viewer).
    pub fn documented(self) -> bool {
        // The fault hook is for drills and tests, off unless configured.
        !matches!(self, Route::OpenApi | Route::DocsRedirect | Route::Docs | Route::DocsAsset | Route::AdminFaultPanic)
    }

    /// Which rate-limit quota the route spends.
    pub fn group(self) -> Group {
        match self {
            Route::Health
            | Route::Ready
            | Route::Metrics
            | Route::AuthReady
            | Route::AuthHealthz
            | Route::LoyaltyReady
            | Route::AdminStatusPage
            | Route::OpenApi
            | Route::DocsRedirect
            | Route::Docs
            | Route::DocsAsset => Group::Exempt,
            Route::Registration | Route::Login | Route::Logout | Route::Refresh => Group::Auth,
            _ => Group::Api,
        }
    }
}

/// `(template, method, route)` — the single list of what the server answers.
pub const ROUTES: &[(&str, Method, Route)] = &[
    ("/health", Method::GET, Route::Health),
    ("/ready", Method::GET, Route::Ready),
    ("/metrics", Method::GET, Route::Metrics),
    ("/events", Method::POST, Route::Events),
    ("/events/batch", Method::POST, Route::EventsBatch),
    ("/resource/{id}", Method::GET, Route::Resource),
    ("/admin/dead-letters", Method::GET, Route::DeadLetters),
    ("/admin/dead-letters/{id}", Method::GET, Route::DeadLetter),
    ("/admin/dead-letters/{id}", Method::DELETE, Route::DeadLetterDelete),
    ("/admin/dead-letters/{id}/replay", Method::POST, Route::DeadLetterReplay),
    ("/admin/dead-letters/replay", Method::POST, Route::DeadLettersReplay),
    ("/admin/dead-letters/purge", Method::POST, Route::DeadLettersPurge),
    ("/auth/registration", Method::POST, Route::Registration),
    ("/auth/login", Method::POST, Route::Login),
    ("/auth/logout", Method::POST, Route::Logout),
    ("/auth/refresh", Method::POST, Route::Refresh),
    ("/auth/info", Method::GET, Route::AuthInfo),
    ("/auth/ready", Method::GET, Route::AuthReady),
    ("/auth/healthz", Method::GET, Route::AuthHealthz),
    ("/loyalty", Method::POST, Route::LoyaltyOperation),
    ("/loyalty/ready", Method::GET, Route::LoyaltyReady),
    ("/loyalty/{uuid}", Method::GET, Route::LoyaltyBalance),
    ("/loyalty/{uuid}/transactions", Method::GET, Route::LoyaltyTransactions),
    ("/sagas/{id}", Method::GET, Route::Saga),
    ("/admin/status", Method::GET, Route::AdminStatusPage),
    ("/admin/status.json", Method::GET, Route::AdminStatus),
    ("/admin/faults/{subsystem}/panic", Method::POST, Route::AdminFaultPanic),
    ("/notifications", Method::POST, Route::Notifications),
    ("/notifications/{id}", Method::GET, Route::Notification),
    ("/webhooks/endpoints", Method::GET, Route::WebhookEndpoints),
    ("/webhooks/endpoints", Method::POST, Route::WebhookEndpointCreate),
    ("/webhooks/endpoints/{id}", Method::GET, Route::WebhookEndpoint),
    ("/webhooks/endpoints/{id}", Method::PATCH, Route::WebhookEndpointUpdate),
    ("/webhooks/endpoints/{id}", Method::DELETE, Route::WebhookEndpointDelete),
    ("/webhooks/endpoints/{id}/enable", Method::POST, Route::WebhookEndpointEnable),
    ("/webhooks/endpoints/{id}/disable", Method::POST, Route::WebhookEndpointDisable),
    ("/webhooks/endpoints/{id}/secret", Method::GET, Route::WebhookEndpointSecret),
    ("/webhooks/endpoints/{id}/secret/rotate", Method::POST, Route::WebhookEndpointRotate),
    ("/webhooks/endpoints/{id}/attempts", Method::GET, Route::WebhookEndpointAttempts),
    ("/webhooks/endpoints/{id}/stats", Method::GET, Route::WebhookEndpointStats),
    ("/webhooks/deliveries/{id}/resend", Method::POST, Route::WebhookDeliveryResend),
    ("/workflows", Method::GET, Route::Workflows),
    ("/workflows", Method::POST, Route::WorkflowCreate),
    ("/workflows/{id}", Method::GET, Route::Workflow),
    ("/workflows/{id}", Method::PUT, Route::WorkflowReplace),
    ("/workflows/{id}", Method::DELETE, Route::WorkflowDelete),
    ("/workflows/{id}/runs", Method::POST, Route::WorkflowRunStart),
    ("/workflows/{id}/runs", Method::GET, Route::WorkflowRuns),
    ("/workflows/{id}/runs/{run_id}", Method::GET, Route::WorkflowRun),
    ("/dashboard", Method::GET, Route::Dashboard),
    ("/openapi.json", Method::GET, Route::OpenApi),
    ("/docs", Method::GET, Route::DocsRedirect),
    ("/docs/", Method::GET, Route::Docs),
    ("/docs/{*path}", Method::GET, Route::DocsAsset),
];

pub struct Table {
    /// Template → indexes into [`ROUTES`] of its methods.
    router: matchit::Router<Vec<usize>>,
}

/// What a path resolved to.
pub enum Matched<'p> {
    Found {
        route: Route,
        template: &'static str,
        params: matchit::Params<'p, 'p>,
    },
    /// The path exists, the method does not.
    WrongMethod {
        template: &'static str,
    },
}

impl Table {
    pub fn new() -> Self {
        let mut by_template: Vec<(&'static str, Vec<usize>)> = Vec::new();
        for (i, (template, _, _)) in ROUTES.iter().enumerate() {
            match by_template.iter_mut().find(|(t, _)| t == template) {
                Some((_, methods)) => methods.push(i),
                None => by_template.push((template, vec![i])),
            }
        }
        let mut router = matchit::Router::new();
        for (template, methods) in by_template {
            // The templates are constants checked by the test below.
            let _ = router.insert(template, methods);
        }
        Table { router }
    }

    pub fn at<'p>(&'p self, method: &Method, path: &'p str) -> Option<Matched<'p>> {
        let m = self.router.at(path).ok()?;
        let template = ROUTES[m.value[0]].0;
        Some(match m.value.iter().find(|&&i| ROUTES[i].1 == *method) {
            Some(&i) => Matched::Found { route: ROUTES[i].2, template, params: m.params },
            None => Matched::WrongMethod { template },
        })
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

    fn route(t: &Table, method: Method, path: &str) -> Option<Route> {
        match t.at(&method, path) {
            Some(Matched::Found { route, .. }) => Some(route),
            _ => None,
        }
    }

    #[test]
    fn every_route_is_reachable() {
        let t = Table::new();
        for (template, method, expected) in ROUTES {
            let path = template.replace("{id}", "42").replace("{uuid}", "u-1").replace("{*path}", "swagger-ui.css");
            assert_eq!(route(&t, method.clone(), &path), Some(*expected), "{method} {template}");
        }
        assert!(matches!(t.at(&Method::PUT, "/events"), Some(Matched::WrongMethod { template: "/events" })));
        assert!(t.at(&Method::GET, "/nope").is_none());
        // A literal segment wins over a parameter.
        assert_eq!(route(&t, Method::POST, "/admin/dead-letters/replay"), Some(Route::DeadLettersReplay));
        match t.at(&Method::GET, "/resource/device-123") {
            Some(Matched::Found { params, .. }) => assert_eq!(params.get("id"), Some("device-123")),
            _ => panic!("resource route"),
        }
    }
}
