use super::*;

/// A dedup that answers each check after `delay` with one verdict per query,
/// or fails as its store would.
struct FakeDedup {
    delay: Duration,
    store_down: bool,
}

#[tonic::async_trait]
impl DedupService for FakeDedup {
    async fn check_signals(
        &self,
        request: Request<pb::CheckSignalsRequest>,
    ) -> Result<Response<pb::CheckSignalsResponse>, Status> {
        tokio::time::sleep(self.delay).await;
        if self.store_down {
            return Err(crate::store_unavailable("dedup store unavailable"));
        }
        let verdicts = request.into_inner().queries.iter().map(|_| pb::DedupVerdict::default()).collect();
        Ok(Response::new(pb::CheckSignalsResponse { verdicts }))
    }

    async fn bind_remediations(
        &self,
        _: Request<pb::BindRemediationsRequest>,
    ) -> Result<Response<pb::BindRemediationsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_placements(
        &self,
        _: Request<pb::GetPlacementsRequest>,
    ) -> Result<Response<pb::GetPlacementsResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

fn local_dedup(delay: Duration, store_down: bool, deadline: Duration) -> DedupClient {
    let service: Arc<dyn DedupService> = Arc::new(FakeDedup { delay, store_down });
    DedupClient::local(LocalService::Dedup(service), "edge", deadline).unwrap()
}

fn two_queries() -> pb::CheckSignalsRequest {
    pb::CheckSignalsRequest { queries: vec![pb::DedupQuery::default(), pb::DedupQuery::default()] }
}

#[tokio::test]
async fn an_in_process_call_reaches_the_service_and_answers_what_it_answers() {
    let dedup = local_dedup(Duration::ZERO, false, Duration::from_secs(1));
    let answer = dedup.check_signals(two_queries()).await.unwrap().into_inner();
    assert_eq!(answer.verdicts.len(), 2);
}

#[tokio::test]
async fn an_in_process_call_past_its_deadline_fails_as_a_tonic_client_does() {
    let dedup = local_dedup(Duration::from_secs(5), false, Duration::from_millis(20));
    let status = dedup.check_signals(two_queries()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Cancelled);
    assert_eq!(status.message(), "Timeout expired");
    // A missed deadline may have been applied: the caller must not treat it as refused.
    assert!(!crate::nothing_applied(&status));
}

#[tokio::test]
async fn a_refusal_by_the_services_store_stays_a_refusal_in_process() {
    let dedup = local_dedup(Duration::ZERO, true, Duration::from_secs(1));
    let status = dedup.check_signals(two_queries()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(crate::nothing_applied(&status), "the caller degrades knowing nothing was applied");
}

#[test]
fn a_component_handing_over_another_components_service_is_not_taken_for_it() {
    let service: Arc<dyn DedupService> = Arc::new(FakeDedup { delay: Duration::ZERO, store_down: false });
    assert!(StormClient::local(LocalService::Dedup(service), "edge", Duration::from_secs(1)).is_none());
}
